"""gpubp.sklearn: scikit-learn's own estimator checks, the mapping of scikit-learn's objective onto gpubp's,
the ecosystem (Pipeline, GridSearchCV, cross_val_score, clone, pickle), and the fitted attributes."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import requires_gpu

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from gpubp.errors import GpubpWarning  # noqa: E402
from gpubp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

FLOAT32_EQUIVALENCE = {
    "check_sample_weight_equivalence_on_dense_data":
        "float32 training: the check's rtol=1e-7 is below float32's resolution (1.2e-7); the float64 "
        "estimators pass it",
}


def _expected_failures(estimator):
    return FLOAT32_EQUIVALENCE if estimator.dtype == "float32" else {}


@parametrize_with_checks([
    MLPClassifier(backend="numpy"),
    MLPRegressor(backend="numpy"),
    MLPClassifier(backend="numpy", solver="sgd", learning_rate_init=0.01, nesterovs_momentum=False, activation="tanh"),
    MLPRegressor(backend="numpy", solver="sgd", learning_rate="adaptive", loss="huber", activation="gelu"),
    MLPClassifier(backend="numpy", dtype="float32"),
    MLPRegressor(backend="numpy", dtype="float32"),
], expected_failed_checks=_expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# --- scikit-learn's objective, step by step, with scikit-learn itself as the oracle -------------------------
def _sklearn_step(theirs_class, ours, X, y, **fit):
    """scikit-learn's estimator, set to our weights, after one partial_fit from them: the first step of a new
    optimizer of its own."""
    theirs = theirs_class(**{k: v for k, v in ours.get_params().items() if k in theirs_class().get_params()
                             and k != "loss"})
    theirs.partial_fit(X, y, **fit)
    theirs.coefs_, theirs.intercepts_ = ours.coefs_, ours.intercepts_
    del theirs._optimizer
    theirs.partial_fit(X, y, **fit)
    return theirs


def _penalty(estimator, coefs):
    return 0.5 * estimator.alpha * sum((c ** 2).sum() for c in coefs) / estimator.batch_size


SGD = dict(activation="tanh", solver="sgd", momentum=0.0, learning_rate_init=0.05, shuffle=False,
           random_state=0, backend="numpy")


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("outputs", [1, 3])
def test_regressor_sgd_step_is_scikit_learns(alpha, outputs, rng):
    from sklearn.neural_network import MLPRegressor as SkMLPRegressor

    X, y = rng.normal(size=(30, 4)), rng.normal(size=(30, outputs)).squeeze()
    ours = MLPRegressor((5,), alpha=alpha, batch_size=30, **SGD).partial_fit(X, y)
    theirs = _sklearn_step(SkMLPRegressor, ours, X, y)
    coefs_before, intercepts_before = ours.coefs_, ours.intercepts_
    ours.partial_fit(X, y)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    for a, b, before in zip(ours.intercepts_, theirs.intercepts_, intercepts_before):
        # gpubp decays the intercepts too: by lr·alpha·b/n on top of scikit-learn's step (documented)
        np.testing.assert_allclose(a, b - 0.05 * alpha * before / 30, rtol=1e-10, atol=1e-13)
    # the same loss, but for the penalty: scikit-learn's of the weights before the step, gpubp's of those after
    expected = theirs.loss_ - _penalty(ours, coefs_before) + _penalty(ours, ours.coefs_)
    assert ours.loss_ == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_classifier_sgd_step_is_scikit_learns(kind, rng):
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    X = rng.normal(size=(40, 3))
    y = {"binary": rng.integers(0, 2, 40), "multiclass": np.array(list("abcd"))[rng.integers(0, 4, 40)],
         "multilabel": (rng.uniform(size=(40, 4)) > 0.5).astype(int)}[kind]
    fit = {"classes": np.arange(4) if kind == "multilabel" else np.unique(y)}
    ours = MLPClassifier((6,), alpha=0.0, batch_size=40, **SGD).partial_fit(X, y, **fit)
    theirs = _sklearn_step(SkMLPClassifier, ours, X, y, **fit)
    ours.partial_fit(X, y)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
    assert ours.out_activation_ == theirs.out_activation_ and ours.n_outputs_ == theirs.n_outputs_


def test_adam_steps_are_scikit_learns_but_for_where_epsilon_enters(rng):
    """With ε negligible the Adam steps are scikit-learn's; ε itself enters as in PyTorch (documented)."""
    from sklearn.neural_network import MLPRegressor as SkMLPRegressor

    X, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    ours = MLPRegressor((4,), activation="tanh", learning_rate_init=0.01, epsilon=1e-30, alpha=0.1, batch_size=20,
                        shuffle=False, random_state=1, backend="numpy").partial_fit(X, y)
    theirs = _sklearn_step(SkMLPRegressor, ours, X, y)
    del ours._optimizer  # a new optimizer, as scikit-learn's has: its first step again
    ours.partial_fit(X, y)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)


def test_a_failed_refit_changes_nothing(rng):
    import gpubp

    if gpubp.cupy_status()[0]:
        pytest.skip("the refit is made to fail by asking for CuPy where there is none")
    X = rng.normal(size=(30, 3))
    est = MLPClassifier((4,), max_iter=3, random_state=0, backend="numpy").fit(X, rng.integers(0, 3, 30))
    before = (est.classes_.copy(), est.n_outputs_, est.out_activation_, est.coefs_, est.n_iter_)
    with pytest.raises(gpubp.errors.BackendUnavailableError):
        est.set_params(backend="cupy").fit(X, rng.integers(0, 2, 30))
    assert (est.classes_.tolist(), est.n_outputs_, est.out_activation_, est.n_iter_) == (
        before[0].tolist(), before[1], before[2], before[4])
    for a, b in zip(est.coefs_, before[3]):
        np.testing.assert_array_equal(a, b)
    assert est.predict_proba(X).shape == (30, 3)


# --- behaviour a scikit-learn user relies on -------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(StandardScaler().fit_transform(X), y, random_state=0)


def test_accuracy_on_digits_is_scikit_learns(digits):
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    X_train, X_test, y_train, y_test = digits
    ours = MLPClassifier((64,), random_state=0, backend="numpy").fit(X_train, y_train)
    theirs = SkMLPClassifier((64,), random_state=0).fit(X_train, y_train)
    assert ours.score(X_test, y_test) > 0.95 and theirs.score(X_test, y_test) > 0.95
    assert abs(ours.score(X_test, y_test) - theirs.score(X_test, y_test)) < 0.03
    assert ours.n_iter_ < 200 and ours.best_loss_ == min(ours.loss_curve_)


def test_stopping_rule_is_scikit_learns(digits):
    X_train, _, y_train, _ = digits
    est = MLPClassifier((16,), random_state=0, tol=1e-2, n_iter_no_change=3, backend="numpy").fit(X_train, y_train)
    best, waited, stop = np.inf, 0, None
    for epoch, loss in enumerate(est.loss_curve_, start=1):
        waited = waited + 1 if loss > best - 1e-2 else 0
        best = min(best, loss)
        if waited > 3:
            stop = epoch
            break
    assert stop == est.n_iter_ == len(est.loss_curve_) < 200


def test_early_stopping_keeps_the_best_validation_weights(digits):
    X_train, _, y_train, _ = digits
    est = MLPClassifier((32,), random_state=0, early_stopping=True, n_iter_no_change=4, backend="numpy")
    est.fit(X_train, y_train)
    scores = est.validation_scores_
    assert est.best_loss_ is None and est.best_validation_score_ == max(scores)
    assert est.n_iter_ == len(scores) < 200
    # refit with max_iter ending at the best epoch: the same weights as the early-stopped run kept
    best_epoch = int(np.argmax(scores)) + 1
    again = clone(est).set_params(max_iter=best_epoch, n_iter_no_change=10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        again.fit(X_train, y_train)
    for a, b in zip(est.coefs_, again.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_adaptive_and_invscaling_rates(rng):
    X, y = rng.normal(size=(50, 3)), rng.integers(0, 2, 50)
    est = MLPClassifier((4,), solver="sgd", learning_rate="invscaling", power_t=0.5, learning_rate_init=0.1,
                        max_iter=3, random_state=0, backend="numpy")
    with pytest.warns(ConvergenceWarning):
        est.fit(X, y)
    assert est._learning_rate == pytest.approx(0.1 / (3 * 50 + 1) ** 0.5)
    adaptive = MLPClassifier((4,), solver="sgd", learning_rate="adaptive", learning_rate_init=0.1, tol=10.0,
                             n_iter_no_change=1, max_iter=50, random_state=0, backend="numpy").fit(X, y)
    # every second epoch fails by tol=10: the rate falls by 5 each time until it is below 1e-6, then it stops
    assert adaptive._learning_rate <= 1e-6 and adaptive._learning_rate * 5 > 1e-6 and adaptive.n_iter_ < 50


def test_string_boolean_and_integer_labels(rng):
    X = rng.normal(size=(60, 3))
    for y in (np.where(X[:, 0] > 0, "yes", "no"), X[:, 0] > 0, np.where(X[:, 0] > 0, 7, -2),
              np.array(["a", "b", "c"])[rng.integers(0, 3, 60)]):
        est = MLPClassifier((8,), max_iter=300, random_state=0, backend="numpy").fit(X, y)
        assert list(est.classes_) == sorted(set(y.tolist()))
        assert est.predict(X).dtype == est.classes_.dtype and set(est.predict(X)) <= set(est.classes_)
        assert est.predict_proba(X).shape == (60, len(est.classes_))
        np.testing.assert_allclose(est.predict_proba(X).sum(axis=1), 1.0)
        np.testing.assert_allclose(np.exp(est.predict_log_proba(X)), est.predict_proba(X))


def test_pipeline_grid_search_cross_validation_and_clone(digits):
    X_train, _, y_train, _ = digits
    pipe = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=60, random_state=0, backend="numpy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipe, X_train, y_train, cv=3)
        search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1],
                                     "mlpclassifier__hidden_layer_sizes": [(8,), (16,)]}, cv=2).fit(X_train, y_train)
    assert scores.min() > 0.8 and search.best_score_ > 0.8
    assert search.best_estimator_[-1].net_.sizes[1] == search.best_params_["mlpclassifier__hidden_layer_sizes"][0]
    copy = clone(search.best_estimator_[-1])
    assert copy.get_params() == search.best_estimator_[-1].get_params() and not hasattr(copy, "net_")


def test_pickle_round_trip_continues_training(rng):
    X, y = rng.normal(size=(80, 5)), rng.normal(size=(80, 2))
    est = MLPRegressor((7,), batch_size=20, random_state=0, backend="numpy")
    est.partial_fit(X, y)
    restored = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(restored.predict(X), est.predict(X))
    assert restored._optimizer.steps == est._optimizer.steps == 4
    est.partial_fit(X, y)
    restored.partial_fit(X, y)
    np.testing.assert_array_equal(restored.predict(X), est.predict(X))


def test_gpu_fitted_estimator_unpickles_without_a_gpu(rng):
    pytest.importorskip("gpubp")
    import gpubp

    if gpubp.cupy_status()[0]:
        pytest.skip("this machine has a usable GPU")
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 3, 30)
    est = MLPClassifier((5,), max_iter=5, random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    est.backend = "cupy"  # as if fitted on a GPU: the pickle holds host arrays and the backend's name
    with pytest.warns(GpubpWarning, match="backend='cupy', which is not available here"):
        restored = pickle.loads(pickle.dumps(est))
    assert restored.net_.backend.name == "numpy"
    np.testing.assert_array_equal(restored.predict_proba(X), est.predict_proba(X))


def test_dataframe_feature_names_and_partial_fit_classes():
    pd = pytest.importorskip("pandas")
    X, y = make_classification(60, 4, random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    est = MLPClassifier((5,), random_state=0, backend="numpy")
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        est.partial_fit(frame, y)
    est.partial_fit(frame.iloc[:30], y[:30], classes=[0, 1, 2])
    assert list(est.feature_names_in_) == ["a", "b", "c", "d"] and list(est.classes_) == [0, 1, 2]
    assert est.n_outputs_ == 3 and est.out_activation_ == "softmax"
    with pytest.raises(ValueError, match=r"classes \[5\] that are not in classes_"):
        est.partial_fit(frame.iloc[:5], np.full(5, 5))
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1])


@pytest.mark.parametrize("params, words", [
    ({"solver": "lbfgs"}, "solver must be one of"),
    ({"activation": "swish"}, "activation must be one of"),
    ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes"),
    ({"learning_rate": "fast"}, "learning_rate must be"),
    ({"alpha": -1.0}, "alpha must be"),
    ({"beta_1": 1.0}, "beta_1 must be"),
    ({"max_iter": 0}, "max_iter must be"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"dtype": "float16"}, "dtype must be"),
    ({"validation_fraction": 1.0}, "validation_fraction must be"),
    ({"activation": ["relu"]}, "activation must be one name for every hidden layer"),
    ({"init": "orthogonal"}, "init must be one of"),
])
def test_bad_parameters_are_named(params, words, rng):
    with pytest.raises(ValueError, match=words):
        MLPClassifier(**params).fit(rng.normal(size=(10, 2)), np.arange(10) % 2)


def test_regressor_specifics(rng):
    X, y = make_regression(80, 4, n_targets=2, random_state=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        MLPRegressor(loss="poisson").fit(X, y)
    est = MLPRegressor((8,), loss="l1", max_iter=5, random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert est.predict(X).shape == (80, 2) and est.out_activation_ == "identity" and est.n_layers_ == 3
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(X)
    with pytest.raises(ValueError, match="hidden_layer_sizes changed"):
        est.set_params(hidden_layer_sizes=(9,)).partial_fit(X, y)


def test_warm_start_continues_and_verbose_prints(rng, capsys):
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    est = MLPClassifier((4,), max_iter=3, warm_start=True, verbose=True, random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
        first = est.coefs_[0].copy()
        est.fit(X, y)
    assert est.n_iter_ == 3 and len(est.loss_curve_) == 6 and not np.array_equal(first, est.coefs_[0])
    assert capsys.readouterr().out.splitlines()[0].startswith("Iteration 1, loss = ")


def test_import_gpubp_does_not_import_sklearn():
    code = "import sys, gpubp; print('sklearn' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_missing_sklearn_names_the_extra(tmp_path):
    blocker = tmp_path / "sklearn"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('No module named sklearn (blocked by the test)')\n")
    code = "import gpubp.sklearn"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": f"{tmp_path}:{sys.path[0] or '.'}", "PATH": ""})
    assert result.returncode != 0 and 'pip install "gpubp[sklearn]"' in result.stderr


@pytest.mark.gpu
@requires_gpu
def test_gpu_estimator_computes_what_the_cpu_one_does(tmp_path):
    X, y = make_classification(300, 10, n_classes=3, n_informative=5, random_state=0)
    weight = np.random.default_rng(0).uniform(0.5, 2, 300)
    settings = dict(hidden_layer_sizes=(32, 16), max_iter=5, batch_size=64, random_state=0, dtype="float64")
    cpu = MLPClassifier(backend="numpy", **settings).fit(X, y, sample_weight=weight)
    gpu = MLPClassifier(backend="cupy", **settings).fit(X, y, sample_weight=weight)
    assert gpu.net_.backend.name == "cupy"
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-9)
    restored = pickle.loads(pickle.dumps(gpu))
    np.testing.assert_array_equal(restored.predict_proba(X), gpu.predict_proba(X))
    onnxruntime = pytest.importorskip("onnxruntime")
    path = gpu.to_onnx(tmp_path / "gpu.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": X})[0], gpu.predict_proba(X), rtol=1e-12)


def test_early_stopping_keeps_an_earlier_calls_best_across_a_warm_start(digits):
    X_train, _, y_train, _ = digits
    est = MLPClassifier((16,), random_state=0, early_stopping=True, n_iter_no_change=3, backend="numpy")
    est.fit(X_train, y_train)
    best, score = est.coefs_, est.best_validation_score_
    # a second call at a rate that only makes things worse: its epochs never beat the first call's best
    est.set_params(warm_start=True, learning_rate_init=5.0, max_iter=3)
    est.fit(X_train, y_train)
    assert max(est.validation_scores_[-3:]) <= score == est.best_validation_score_
    for a, b in zip(est.coefs_, best):
        np.testing.assert_array_equal(a, b)
    restored = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(restored._best_params, est._best_params)


def test_divergence_is_a_value_error_in_the_estimators_terms(rng):
    from gpubp.sklearn import DivergedError

    X, y = make_regression(60, 4, random_state=0)
    est = MLPRegressor((8,), solver="sgd", learning_rate_init=10.0, max_iter=20, random_state=0, backend="numpy")
    with pytest.raises(ValueError, match=r"learning_rate_init=10\b.*Scale the inputs") as caught:
        est.fit(X, y * 1e3)
    assert isinstance(caught.value, DivergedError) and "training diverged in epoch" in str(caught.value)


def test_scikit_learn_parameters_that_gpubp_does_not_use_are_kept():
    """max_fun is lbfgs's (which gpubp has not): kept, so parameters copied from scikit-learn's estimator work."""
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    theirs = SkMLPClassifier().get_params()
    ours = MLPClassifier(**theirs).get_params()
    assert {k: ours[k] for k in theirs} == theirs
