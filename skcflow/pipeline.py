"""Pipelines that expose the detectors' anomaly maps.

scikit-learn's :class:`~sklearn.pipeline.Pipeline` forwards ``predict``,
``score_samples`` and ``decision_function`` to its last step, but not methods
it does not know. :class:`AnomalyPipeline` adds ``anomaly_map`` and
``predict_mask``, so that ``make_pipeline(FeatureExtractor(), CFlowAD())``
localises defects on raw images. A detector that chooses its parameters on
synthetic defects (CFlowAD's ``n_levels="auto"``) gets them from the
pipeline, which has the images to paste them on.
"""

from contextlib import contextmanager

from sklearn.pipeline import Pipeline
from sklearn.pipeline import make_pipeline as _sklearn_make_pipeline
from sklearn.utils.metaestimators import available_if


def _final_step_has(attr):
    return lambda pipeline: hasattr(pipeline._final_estimator, attr)


class AnomalyPipeline(Pipeline):
    """A :class:`~sklearn.pipeline.Pipeline` ending in a skcflow detector.

    Parameters are those of :class:`~sklearn.pipeline.Pipeline`.

    Examples
    --------
    >>> from skcflow import CFlowAD, FeatureExtractor, make_defects, make_pipeline
    >>> data = make_defects(n_train=8, n_test=2, image_size=64, random_state=0)
    >>> pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
    ...                      CFlowAD(max_iter=10, device="cpu", random_state=0))
    >>> pipe.fit(data.train.images).anomaly_map(data.test.images).shape
    (2, 64, 64)
    """

    def fit(self, X, y=None, **params):
        """Fit the steps; a folder, files or batches of images are streamed.

        Images held in memory (an array, a Bunch) are fitted as by
        :class:`~sklearn.pipeline.Pipeline`; a detector that asks for
        synthetic defects (CFlowAD with ``n_levels="auto"``) then gets the
        features of some training images with a defect pasted on each
        (:func:`~skcflow.datasets.paste_defects`, seeded by its
        ``random_state``) as ``synthetic_defects``. A folder, a file, a list of
        files or a re-iterable of image batches is streamed instead
        (:class:`~skcflow.streaming.FeatureStream`): the extractor is fitted
        on the first batch (which fixes its bit depth), then the detector on
        the stream, so that memory stays that of a batch.

        Parameters
        ----------
        X : images, folder, files or re-iterable of image batches
        y : array-like, default=None
            Labels or masks, with images in memory only.

        Returns
        -------
        self
        """
        from .streaming import FeatureStream, is_stream

        if len(self) != 2 or not is_stream(X):
            with self._synthetic_defects_of(X, y):
                return super().fit(X, y, **params)
        if y is not None or params:
            raise ValueError("a streamed fit takes neither y nor fit parameters.")
        extractor = self[0]
        stream = FeatureStream(extractor, X)
        extractor.fit(next(iter(stream.image_batches())))
        self[-1].fit(stream)
        return self

    def fit_predict(self, X, y=None, **params):
        """Fit as :meth:`fit` does (images in memory), then the detector's
        ``fit_predict`` labels of the training images."""
        with self._synthetic_defects_of(X, y):
            return super().fit_predict(X, y, **params)

    @contextmanager
    def _synthetic_defects_of(self, X, y):
        """Let the detector, while it fits, ask for synthetic defects pasted
        on the images ``X`` and encoded by the fitted steps before it."""
        from .features import FeatureExtractor
        from .streaming import is_stream

        detector = self._final_estimator
        if not hasattr(detector, "_synthetic_defect_rows") or len(self) < 2 or is_stream(X) \
                or not isinstance(self.steps[0][1], FeatureExtractor):
            yield
            return
        # The steps are looked up when the detector asks: with memory, the
        # pipeline's fitted clones have replaced them by then.
        detector._synthetic_source = lambda features: synthetic_defects(
            detector, lambda images: self[:-1].transform(images), X, features, y)
        try:
            yield
        finally:
            del detector._synthetic_source

    @available_if(_final_step_has("anomaly_map"))
    def anomaly_map(self, X):
        """Transform ``X`` through the steps, then the detector's ``anomaly_map``."""
        return self._final_estimator.anomaly_map(self[:-1].transform(X))

    @available_if(_final_step_has("predict_mask"))
    def predict_mask(self, X, alpha=None):
        """Transform ``X`` through the steps, then the detector's ``predict_mask``."""
        return self._final_estimator.predict_mask(self[:-1].transform(X), alpha=alpha)

    @available_if(_final_step_has("score_pvalues"))
    def score_pvalues(self, X):
        """Transform ``X`` through the steps, then the detector's ``score_pvalues``."""
        return self._final_estimator.score_pvalues(self[:-1].transform(X))

    @available_if(_final_step_has("pvalue_map"))
    def pvalue_map(self, X):
        """Transform ``X`` through the steps, then the detector's ``pvalue_map``."""
        return self._final_estimator.pvalue_map(self[:-1].transform(X))

    @available_if(_final_step_has("set_threshold"))
    def set_threshold(self, **choice):
        """The detector's ``set_threshold``, without a refit; returns the pipeline."""
        self._final_estimator.set_threshold(**choice)
        return self


def make_pipeline(*steps, memory=None, verbose=False):
    """Build an :class:`AnomalyPipeline`, naming steps as scikit-learn does.

    Parameters
    ----------
    *steps : estimators
        Transformers followed by a detector.
    memory : str or joblib.Memory, default=None
        Caches fitted transformers: a grid over detector parameters then
        extracts features once per extractor setting.
    verbose : bool, default=False

    Returns
    -------
    pipeline : AnomalyPipeline
    """
    named = _sklearn_make_pipeline(*steps).steps
    return AnomalyPipeline(named, memory=memory, verbose=verbose)


def synthetic_defects(detector, transform, images, features, y=None):
    """The fit parameters that give ``detector`` the synthetic defects it asks for.

    What :class:`AnomalyPipeline` passes to CFlowAD's fit for
    ``n_levels="auto"``, for a fit on features made outside a pipeline.

    Parameters
    ----------
    detector : estimator
        The detector to fit; one that asks for none gets ``{}``.
    transform : callable
        Images to the detector's input (the fitted extractor's ``transform``).
    images : array-like of shape (n_images, H, W, 3) or Bunch
        The training images.
    features : Features
        ``transform(images)``.
    y : array-like, default=None
        As for the detector's fit.

    Returns
    -------
    fit_params : dict
        ``{"synthetic_defects": (rows, features, masks)}`` or ``{}``.

    Examples
    --------
    >>> from skcflow import CFlowAD, FeatureExtractor, make_defects
    >>> from skcflow.pipeline import synthetic_defects
    >>> good = make_defects(n_train=8, n_test=1, image_size=64, random_state=0).train.images
    >>> extractor = FeatureExtractor(image_size=64, device="cpu").fit()
    >>> features = extractor.transform(good)
    >>> model = CFlowAD(max_iter=10, device="cpu", random_state=0)
    >>> model.fit(features, **synthetic_defects(model, extractor.transform, good, features)).levels_
    [0, 1, 2]
    """
    from ._images import check_images
    from .datasets import paste_defects

    rows_of = getattr(detector, "_synthetic_defect_rows", None)
    plan = None if rows_of is None else rows_of(features, y)
    if plan is None:
        return {}
    rows, random_state = plan
    pasted = paste_defects(check_images(images)[rows], random_state=random_state)
    return {"synthetic_defects": (rows, transform(pasted.images), pasted.masks)}
