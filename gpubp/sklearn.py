"""scikit-learn estimators trained by gpubp: :class:`MLPClassifier` and :class:`MLPRegressor`.

Drop-in replacements for ``sklearn.neural_network.MLPClassifier``/``MLPRegressor`` with the
``adam`` and ``sgd`` solvers: the same parameters (where the meaning matches), the same
fitted attributes, the same stopping rules, scikit-learn's input validation and estimator
checks; the training itself is :meth:`gpubp.MLP.fit` (on the GPU when one is usable).
Needs the optional extra ``gpubp[sklearn]``; ``import gpubp`` never imports scikit-learn.

How scikit-learn's settings map onto gpubp's (each exact unless said):

* scikit-learn's objective is gpubp's mean loss divided by a scale ``s``. For ``squared_error``
  scikit-learn reports ½·MSE (the mean over every element) but differentiates ½·Σ over the K
  outputs of the mean over samples: the reporting scale is 2, the training scale 2/K. For K-label
  classification (a sum over the labels, a mean over samples) both are 1/K; 1 otherwise. The
  estimator reports scikit-learn's value (``loss_``, ``loss_curve_``) and trains on exactly
  scikit-learn's gradient by scaling ``sgd``'s learning rate by ``1/s`` and ``adam``'s ε and
  every weight decay by ``s``.
* ``adam``'s ε is PyTorch's: added to the bias-corrected ``√v̂``. scikit-learn adds it to the
  uncorrected ``√v``, the same as PyTorch's with ``ε/√(1 − β₂ᵗ)``: about 30× larger at the first
  step, equal after a few thousand; with the default ε = 1e-8 a first step differs by about
  3e-7/|g| relative (3e-4 for a gradient of 1e-3), later steps by less.
* ``alpha`` (the L2 penalty ½·α·‖W‖² per batch weight sum) is a weight decay of
  ``α / (batch_size · mean sample weight)`` in the update: exact for full batches; for minibatches
  scikit-learn divides by each batch's own weight sum, gpubp by its expected value. gpubp
  decays the intercepts too (scikit-learn does not). ``loss_`` adds the penalty of the weights at
  the end of each epoch.
* ``learning_rate`` (``sgd`` only, as in scikit-learn): ``invscaling`` sets the rate to
  ``learning_rate_init / (t + 1)^power_t`` after each epoch (t = samples seen), ``adaptive``
  divides it by 5 where scikit-learn would stop. gpubp's momentum is PyTorch's
  (``v = μv + g``, ``θ -= η·v``): the same as scikit-learn's while the rate is constant; when
  it changes, scikit-learn's velocity keeps the old rate.
* ``early_stopping`` holds out ``validation_fraction`` (stratified for single-label classifiers
  where every class has two samples and room in both parts; scikit-learn stratifies two classes only),
  scores it each epoch (accuracy or R², weighted), and keeps the best weights — across ``warm_start``
  calls too, as scikit-learn does. ``n_iter_`` counts the epochs of the last call, ``loss_curve_``
  and ``t_`` all of them.
* Sample weights give the weighted mean loss (see :mod:`gpubp.losses`); they must be ≥ 0
  (scikit-learn also takes negative ones).
* Ctrl-C (``KeyboardInterrupt``) stops ``fit`` with the exception, leaving the weights of the last
  step (scikit-learn catches it, warns and returns).
* ``coefs_`` and ``intercepts_`` are copies of the network's weights: assigning a list changes the
  network, editing an array in place does not. The network itself is ``net_`` (a :class:`gpubp.MLP`).
* ``init="glorot_uniform"`` (gpubp's parameter) draws the weights as scikit-learn does, uniform in
  ±√(6/(fan_in + fan_out)) (scikit-learn draws the intercepts too, and narrows the range to
  ±√(2/(fan_in + fan_out)) for ``logistic``; gpubp starts the intercepts at 0 and keeps the range);
  ``"auto"`` is :class:`gpubp.MLP`'s He/Xavier choice.
* ``max_fun`` is accepted and unused (scikit-learn's ``lbfgs`` only), so parameters copied from
  scikit-learn's estimators work; ``solver="lbfgs"`` is refused.
* Training that diverges raises :class:`DivergedError`, a ``ValueError`` as in scikit-learn.
* ``dtype=None`` trains in the input's precision (float32 stays float32; everything else float64),
  as scikit-learn does; ``dtype="float32"`` is the fast choice on a GPU.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import numpy as np

from . import _validate as check
from .backends import Backend, get_backend
from .errors import BackendUnavailableError, DivergenceError, GpubpValueError, GpubpWarning, OptionalDependencyError
from .init import SCHEMES
from .mlp import MLP
from .onnx import DEFAULT_OPSET, export_network
from .optim import SGD, Adam, Optimizer

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise OptionalDependencyError(
        f"gpubp.sklearn needs scikit-learn >= 1.6 ({error}); install it with: pip install \"gpubp[sklearn]\""
    ) from None

class DivergedError(GpubpValueError):
    """Training of an estimator produced NaN or Inf (a ``ValueError``, as scikit-learn's estimators raise)."""


ACTIVATION_NAMES = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
"""scikit-learn's activation names → gpubp's; gpubp's own names (gelu, silu, …) are accepted as they are."""
GPUBP_ACTIVATIONS = ("sigmoid", "leaky_relu", "gelu", "silu", "softplus", "elu")
SOLVERS = ("adam", "sgd")
LEARNING_RATES = ("constant", "invscaling", "adaptive")
REGRESSION_LOSSES = {"squared_error": "mse", "mse": "mse", "l1": "l1", "huber": "huber"}
SMALLEST_ADAPTIVE_LR = 1e-6
"""``learning_rate="adaptive"`` stops instead of dividing once the rate is this small (scikit-learn's rule)."""


class _MLPEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, the training run, pickling, export."""

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *, solver: str = "adam",
                 alpha: float = 0.0001, batch_size: Any = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: Any = None, tol: float = 1e-4, verbose: bool = False, warm_start: bool = False,
                 momentum: float = 0.9, nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000, backend: Any = "auto",
                 dtype: Any = None, init: str = "glorot_uniform"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype
        self.init = init

    # --- what the subclasses define ------------------------------------------------------------------------
    _is_classifier = False

    def _encode_targets(self, y: Any, first_pass: bool, classes: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The targets as gpubp trains on them, and (on the first pass) the attributes they decide —
        ``n_outputs_``, ``out_activation_``, the loss and its scales — set by ``_fit`` once the network is built."""
        raise NotImplementedError

    def _validation_score(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> float:
        raise NotImplementedError

    # --- parameters ----------------------------------------------------------------------------------------
    def _check_params(self) -> tuple[list[int], str]:
        """The hidden sizes and gpubp's activation name; every parameter checked, naming the first bad one."""
        given = self.hidden_layer_sizes
        sizes: list[Any] = [given] if np.isscalar(given) else list(given)
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        if not isinstance(self.activation, str):
            raise ValueError(f"activation must be one name for every hidden layer, as in scikit-learn, got "
                             f"{self.activation!r} (gpubp.MLP takes one per layer)")
        activation = self.activation if self.activation in GPUBP_ACTIVATIONS else ACTIVATION_NAMES.get(self.activation)
        if activation is None:
            raise ValueError(f"activation must be one of {sorted(ACTIVATION_NAMES) + list(GPUBP_ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {list(SOLVERS)} (gpubp has no 'lbfgs'), got {self.solver!r}")
        if self.learning_rate not in LEARNING_RATES:
            raise ValueError(f"learning_rate must be one of {list(LEARNING_RATES)}, got {self.learning_rate!r}")
        for name in ("alpha", "power_t", "tol"):
            check.positive_float(name, getattr(self, name), allow_zero=True)
        for name in ("learning_rate_init", "epsilon"):
            check.positive_float(name, getattr(self, name))
        for name in ("beta_1", "beta_2"):
            check.unit_interval(name, getattr(self, name))
        for name in ("max_iter", "n_iter_no_change"):
            check.positive_int(name, getattr(self, name))
        if check.positive_float("momentum", self.momentum, allow_zero=True) > 1:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum!r}")
        if check.positive_float("validation_fraction", self.validation_fraction) >= 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            check.positive_int("batch_size", self.batch_size)
        if self.init not in ("auto", *SCHEMES):
            raise ValueError(f"init must be one of {['auto', *SCHEMES]}, got {self.init!r}")
        if self.dtype not in (None, "float32", "float64", np.float32, np.float64):
            raise ValueError(f"dtype must be None (the input's precision), 'float32' or 'float64', got {self.dtype!r}")
        return [int(s) for s in sizes], activation

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn(f"batch_size={self.batch_size} is larger than the {n} training samples; it is clipped "
                          f"to {n}", UserWarning, stacklevel=4)
        return int(min(self.batch_size, n))

    # --- fit ------------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """Train for up to ``max_iter`` epochs (from new weights unless ``warm_start``); returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def _validate(self, X: Any, y: Any, sample_weight: Any, first_pass: bool) -> tuple[Any, Any, Any]:
        X, y = validate_data(self, X, y, reset=first_pass, dtype=[np.float64, np.float32], multi_output=True,
                             y_numeric=not self._is_classifier)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype, ensure_non_negative=True)
        return X, y, sample_weight

    def _fit(self, X: Any, y: Any, sample_weight: Any, incremental: bool, classes: Any = None) -> Any:
        hidden, activation = self._check_params()
        first_pass = not hasattr(self, "net_") or (not self.warm_start and not incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        X, y, sample_weight = self._validate(X, y, sample_weight, first_pass)
        targets, decided = self._encode_targets(y, first_pass, classes)
        if first_pass:  # nothing of the estimator changes before the new network exists
            random_state = check_random_state(self.random_state)
            net = self._build(X, hidden, activation, decided, random_state)
            self._reset(net, decided, random_state)
        elif list(self.net_.sizes[1:-1]) != hidden:
            raise ValueError(f"hidden_layer_sizes changed from {list(self.net_.sizes[1:-1])} to {hidden} since the "
                             f"last fit; warm_start and partial_fit continue the same network")
        x_train, y_train, w_train, validation = self._split(X, targets, y, sample_weight)
        batch_size = self._batch_size(x_train.shape[0])
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer(batch_size, w_train)
        seed = int(self._random_state.randint(np.iinfo(np.int32).max))
        epochs = 1 if incremental else self.max_iter
        self.n_iter_ = 0  # the epochs of this call (scikit-learn's count); loss_curve_ and t_ go on
        run = _Epochs(self, validation, x_train.shape[0], batch_size * _mean(w_train))
        try:
            self.net_.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, optimizer=self._optimizer,
                          shuffle=bool(self.shuffle), progress=False, seed=seed, lr_schedule=run.learning_rate,
                          sample_weight=w_train, callback=run.end_of_epoch)
        except DivergenceError as error:  # in the estimator's terms, and the ValueError scikit-learn raises
            raise DivergedError(
                f"training diverged in epoch {self.n_iter_ + 1}: the loss or the gradients became NaN or Inf "
                f"(learning_rate_init={self.learning_rate_init:g}). Scale the inputs (e.g. StandardScaler) or "
                f"lower learning_rate_init. gpubp said: {error}") from error
        run.finish(incremental)
        return self

    def _build(self, X: np.ndarray, hidden: list[int], activation: str, decided: dict[str, Any],
               random_state: Any) -> MLP:
        """A new network (the first pass), initialised from ``random_state``."""
        dtype = self.dtype if self.dtype is not None else ("float32" if X.dtype == np.float32 else "float64")
        seed = int(random_state.randint(np.iinfo(np.int32).max))
        return MLP([X.shape[1], *hidden, decided["n_outputs_"]], activation=activation, loss=decided["_loss_name"],
                   backend=self.backend, dtype=np.dtype(dtype).name, seed=seed, init=self.init)

    def _reset(self, net: MLP, decided: dict[str, Any], random_state: Any) -> None:
        """The new network and the attributes of a first pass; counters and histories start again."""
        for name, value in decided.items():
            setattr(self, name, value)
        self.net_ = net
        self._random_state = random_state
        self.n_layers_ = len(net.sizes)
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_: list[float] = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_: list[float] | None = []
            self.best_validation_score_: float | None = -np.inf
            self.best_loss_: float | None = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
        for stale in ("_optimizer", "_best_params"):
            if hasattr(self, stale):
                delattr(self, stale)

    def _split(self, X: np.ndarray, targets: np.ndarray, y: np.ndarray,
               weight: np.ndarray | None) -> tuple[Any, Any, Any, Any]:
        """Training arrays and, with ``early_stopping``, the held-out ``(X, y, weight)`` scored each epoch."""
        if not self.early_stopping:
            return X, targets, weight, None
        stratify = y if self._is_classifier and y.ndim == 1 and _stratifiable(y, self.validation_fraction) else None
        arrays = [X, targets, y] + ([weight] if weight is not None else [])
        parts = train_test_split(*arrays, random_state=self._random_state, test_size=self.validation_fraction,
                                 stratify=stratify)
        x_train, x_val, t_train, _, _, y_val = parts[:6]
        w_train, w_val = (parts[6], parts[7]) if weight is not None else (None, None)
        if x_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             "your dataset.")
        return x_train, t_train, w_train, (x_val, y_val, w_val)

    def _new_optimizer(self, batch_size: int, weight: np.ndarray | None) -> Optimizer:
        """scikit-learn's solver on gpubp's loss scale (see the module's notes)."""
        s = self._train_scale
        decay = self.alpha * s / (batch_size * _mean(weight))
        self._learning_rate = float(self.learning_rate_init)
        if self.solver == "adam":
            return Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon * s,
                        weight_decay=decay)
        return SGD(lr=self.learning_rate_init / s, momentum=self.momentum,
                   nesterov=bool(self.nesterovs_momentum) and self.momentum > 0, weight_decay=decay)

    # --- fitted attributes ------------------------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "net_")

    @property
    def coefs_(self) -> list[np.ndarray]:
        """The weight matrices ``(fan_in, fan_out)``: copies of the network's (editing one in place changes
        nothing; assigning a list, ``est.coefs_ = [...]``, does, checked as ``net_.set_weights`` checks)."""
        check_is_fitted(self)
        return self.net_.get_weights()[0::2]

    @coefs_.setter
    def coefs_(self, coefs: Any) -> None:
        self._set_layers(coefs, 0)

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """The bias vectors (copies; assign a list to change them, as for :attr:`coefs_`)."""
        check_is_fitted(self)
        return self.net_.get_weights()[1::2]

    @intercepts_.setter
    def intercepts_(self, intercepts: Any) -> None:
        self._set_layers(intercepts, 1)

    def _set_layers(self, arrays: Any, start: int) -> None:
        check_is_fitted(self)
        weights = self.net_.get_weights()
        arrays = list(arrays)
        if len(arrays) != len(weights) // 2:
            raise ValueError(f"expected {len(weights) // 2} arrays, one per layer, got {len(arrays)}")
        weights[start::2] = arrays
        self.net_.set_weights(weights)

    @property
    def loss_(self) -> float:
        """The last epoch's training loss, scikit-learn's definition (penalty included)."""
        check_is_fitted(self)
        return self.loss_curve_[-1]

    def _forward(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.net_.predict(X)

    # --- pickling and export ------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Host copies of the network and the optimizer's state: no device array is pickled."""
        state = dict(super().__getstate__())
        net = state.pop("net_", None)
        if net is not None:
            state["net_"] = {"config": net.config(), "params": net.backend.to_host(net.params)}
            optimizer = state.pop("_optimizer", None)
            if optimizer is not None and optimizer.steps > 0:
                state["_optimizer"] = optimizer.export_state(net.backend)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuilt on this machine's backend: the pickled one, or NumPy (with a warning) when it is not here."""
        net, optimizer = state.pop("net_", None), state.pop("_optimizer", None)
        super().__setstate__(state)
        if net is None:
            return
        self.net_ = MLP.from_config(net["config"], net["params"], _unpickling_backend(self.backend))
        if optimizer is not None:
            meta, arrays = optimizer
            self._optimizer = Optimizer.from_state(self.net_.backend, self.net_.params, meta, arrays)

    def to_onnx(self, path: Any, opset: int = DEFAULT_OPSET) -> Any:
        """Write the fitted network as ONNX (see :mod:`gpubp.onnx`); returns the path. Its output is what
        ``predict_proba`` (classifier) or ``predict`` (regressor, as ``(n, n_outputs)``) returns; the
        input is the network's dtype (float64 unless fitted on float32 or with ``dtype="float32"``);
        the metadata holds ``classes_`` as JSON. Preprocessing (a Pipeline's scaler) is not included."""
        check_is_fitted(self)
        metadata = {"sklearn_estimator": type(self).__name__}
        if hasattr(self, "classes_"):
            metadata["classes"] = json.dumps(self.classes_.tolist())
        two_columns = self._is_classifier and self.n_outputs_ == 1 and not getattr(self, "_multilabel", False)
        return export_network(self.net_, path, opset, metadata=metadata, binary_as_two_columns=two_columns)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags


class _Epochs:
    """One ``fit``/``partial_fit`` call's epochs, as scikit-learn counts and judges them: ``loss_curve_``,
    the stopping rule on ``tol``/``n_iter_no_change``, early stopping's validation scores and best weights,
    and the learning-rate schedules. Driven by :meth:`gpubp.MLP.fit` through its ``callback``."""

    def __init__(self, estimator: _MLPEstimator, validation: Any, n_train: int, penalty_divisor: float) -> None:
        self.estimator, self.validation, self.n_train = estimator, validation, n_train
        self.penalty_scale = 0.5 * estimator.alpha / penalty_divisor
        self.stopped = False

    def learning_rate(self, epoch: int) -> float:
        """The current rate in gpubp's units (``sgd`` divides by the loss scale; ``adam``'s stays fixed)."""
        est = self.estimator
        if est.solver == "adam":
            return float(est.learning_rate_init)
        return est._learning_rate / est._train_scale

    def _penalty(self) -> float:
        if not self.penalty_scale:
            return 0.0
        net = self.estimator.net_
        xp = net.backend.xp
        return self.penalty_scale * float(sum(xp.vdot(w.ravel(), w.ravel()) for w in net.weights))

    def end_of_epoch(self, epoch: int, record: dict[str, float]) -> bool:
        """Record the epoch as scikit-learn does; True to stop."""
        est = self.estimator
        loss = record["loss"] / est._loss_scale + self._penalty()  # scikit-learn's loss_, as it reports it
        est.n_iter_ += 1
        est.t_ += self.n_train
        est.loss_curve_.append(loss)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}", file=sys.stdout, flush=True)
        self._judge(loss)
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            est._learning_rate = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            message = f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} consecutive epochs."
            if est.solver == "sgd" and est.learning_rate == "adaptive" and est._learning_rate > SMALLEST_ADAPTIVE_LR:
                est._learning_rate /= 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"{message} Setting learning rate to {est._learning_rate:f}", flush=True)
            else:
                if est.verbose:
                    print(f"{message} Stopping.", flush=True)
                self.stopped = True
        return self.stopped

    def _judge(self, loss: float) -> None:
        """scikit-learn's improvement count: on the validation score with early stopping, else on the loss."""
        est = self.estimator
        if self.validation is None:
            assert est.best_loss_ is not None
            est._no_improvement_count = est._no_improvement_count + 1 if loss > est.best_loss_ - est.tol else 0
            est.best_loss_ = min(est.best_loss_, loss)
            return
        assert est.validation_scores_ is not None and est.best_validation_score_ is not None
        x_val, y_val, w_val = self.validation
        score = est._validation_score(x_val, y_val, w_val)
        est.validation_scores_.append(score)
        if est.verbose:
            print(f"Validation score: {score:f}", flush=True)
        est._no_improvement_count = (est._no_improvement_count + 1 if score < est.best_validation_score_ + est.tol
                                     else 0)
        if score > est.best_validation_score_:  # kept on the host: it pickles, and outlives a warm start
            est.best_validation_score_ = score
            est._best_params = est.net_.backend.to_host(est.net_.params)

    def finish(self, incremental: bool) -> None:
        """After the run: the best weights back (early stopping); the warning scikit-learn gives at max_iter."""
        est = self.estimator
        if self.validation is not None and getattr(est, "_best_params", None) is not None:
            est.net_.backend.copy_into(est.net_.params, est._best_params)
        if not incremental and not self.stopped:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({est.max_iter}) reached and the optimization "
                          f"hasn't converged yet.", ConvergenceWarning, stacklevel=3)


class MLPClassifier(ClassifierMixin, _MLPEstimator):
    """scikit-learn's ``MLPClassifier`` trained by gpubp (``adam`` or ``sgd``; see the module's notes).

    Two classes: one sigmoid output (``bce``); more: softmax outputs (``cross_entropy``); a 2-D
    0/1 target: multi-label, one sigmoid per label. ``classes_`` holds the labels (any sortable
    type); ``net_`` is the trained :class:`gpubp.MLP`.
    """

    _is_classifier = True

    def _encode_targets(self, y: Any, first_pass: bool, classes: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        multilabel = type_of_target(y) == "multilabel-indicator"
        if not multilabel:
            check_classification_targets(y)
        decided = self._classes_of(y, multilabel, classes) if first_pass else {}
        if not first_pass and multilabel != self._multilabel:
            raise ValueError("y changed between multi-label and single-label since the last fit")
        known: np.ndarray = decided["classes_"] if first_pass else self.classes_
        if multilabel:
            if y.shape[1] != len(known):
                raise ValueError(f"y has {y.shape[1]} labels, the network was fitted on {len(known)}")
            return np.asarray(y, dtype=np.float64), decided
        unknown = np.setdiff1d(np.unique(y), known)
        if unknown.size:
            raise ValueError(f"y has classes {unknown.tolist()} that are not in classes_ {known.tolist()}"
                             + ("; pass every class with classes= on the first partial_fit" if not first_pass else ""))
        index = np.asarray(np.searchsorted(known, y))
        if len(known) == 2:
            return index.astype(np.float64).reshape(-1, 1), decided
        return index.astype(np.int64), decided

    @staticmethod
    def _classes_of(y: Any, multilabel: bool, classes: Any) -> dict[str, Any]:
        """The attributes the labels decide on a first pass."""
        if multilabel:
            found = np.arange(y.shape[1])
        else:
            found = np.unique(y if classes is None else np.asarray(classes))
            if len(found) < 2:
                raise ValueError(f"y has one class ({found[0]!r}); a classifier needs at least 2 classes")
        two = not multilabel and len(found) == 2
        outputs = 1 if two else len(found)
        loss = "cross_entropy" if not multilabel and not two else "bce"
        scale = 1.0 / outputs if multilabel else 1.0  # scikit-learn sums the labels' losses, gpubp averages
        return {"_multilabel": multilabel, "classes_": found, "n_outputs_": outputs, "_loss_name": loss,
                "out_activation_": "softmax" if loss == "cross_entropy" else "logistic", "_loss_scale": scale,
                "_train_scale": scale}

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> Any:
        """One epoch over ``(X, y)``; the first call needs ``classes`` (every label there will be), unless
        ``y`` is multi-label."""
        if not hasattr(self, "net_") and classes is None and type_of_target(y) != "multilabel-indicator":
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` (for multi-label: each label's probability)."""
        probabilities = self._forward(X)
        if self.n_outputs_ == 1 and not self._multilabel:
            return np.hstack([1.0 - probabilities, probabilities])
        return probabilities

    def predict_log_proba(self, X: Any) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample (multi-label: a 0/1 row, each label above 0.5)."""
        probabilities = self._forward(X)
        if self._multilabel:
            return (probabilities > 0.5).astype(int)
        if self.n_outputs_ == 1:
            return self.classes_[(probabilities[:, 0] > 0.5).astype(int)]
        return self.classes_[np.argmax(probabilities, axis=1)]

    def _validation_score(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> float:
        return float(accuracy_score(y, self.predict(X), sample_weight=weight))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _MLPEstimator):
    """scikit-learn's ``MLPRegressor`` trained by gpubp (identity outputs; see the module's notes).

    ``loss``: ``"squared_error"`` (scikit-learn's, ½·MSE; ``"mse"`` is the same), ``"l1"`` or
    ``"huber"`` (gpubp's, δ = 1). Several target columns train one output each.
    """

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *, loss: str = "squared_error",
                 solver: str = "adam", alpha: float = 0.0001, batch_size: Any = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: Any = None, tol: float = 1e-4, verbose: bool = False, warm_start: bool = False,
                 momentum: float = 0.9, nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000, backend: Any = "auto",
                 dtype: Any = None, init: str = "glorot_uniform"):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver, alpha=alpha,
            batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, backend=backend, dtype=dtype,
            init=init)
        self.loss = loss

    def _encode_targets(self, y: Any, first_pass: bool, classes: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        if self.loss not in REGRESSION_LOSSES:
            raise ValueError(f"loss must be one of {list(REGRESSION_LOSSES)}, got {self.loss!r}")
        targets = np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)
        if not first_pass:
            if targets.shape[1] != self.n_outputs_:
                raise ValueError(f"y has {targets.shape[1]} target columns, the network was fitted on "
                                 f"{self.n_outputs_}")
            return targets, {}
        outputs, loss = targets.shape[1], REGRESSION_LOSSES[self.loss]
        # scikit-learn reports ½·mean((y − ŷ)²) but differentiates ½·Σ over the outputs of the mean over samples
        squared = loss == "mse"
        return targets, {"n_outputs_": outputs, "_loss_name": loss, "out_activation_": "identity",
                         "_loss_scale": 2.0 if squared else 1.0, "_train_scale": 2.0 / outputs if squared else 1.0}

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """One epoch over ``(X, y)``, continuing the network and the optimizer's state; returns self."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X: Any) -> np.ndarray:
        """The network's outputs: ``(n,)`` for one target, ``(n, n_outputs)`` for several."""
        output = self._forward(X)
        return output.ravel() if output.shape[1] == 1 else output

    def _validation_score(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> float:
        return float(r2_score(y, self.predict(X), sample_weight=weight))


# --- helpers ---------------------------------------------------------------------------------------------------
def _stratifiable(y: np.ndarray, fraction: float) -> bool:
    """Whether a stratified split can hold out ``fraction`` of ``y``: every class twice, and room for each."""
    _, counts = np.unique(y, return_counts=True)
    n_val = int(np.ceil(fraction * y.shape[0]))
    return bool(counts.min() >= 2 and len(counts) <= n_val <= y.shape[0] - len(counts))


def _mean(weight: np.ndarray | None) -> float:
    return 1.0 if weight is None else float(np.mean(weight))


def _unpickling_backend(backend: Any) -> Any:
    """The estimator's backend if this machine has it, else NumPy with a :class:`GpubpWarning`."""
    if isinstance(backend, Backend) or backend not in ("cupy", "gpu", "cuda"):
        return backend
    try:
        return get_backend(backend)
    except BackendUnavailableError as error:
        warnings.warn(f"this estimator was fitted with backend={backend!r}, which is not available here ({error}); "
                      f"it runs on NumPy", GpubpWarning, stacklevel=3)
        return "numpy"
