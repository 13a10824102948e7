"""Pipelines that expose the detectors' anomaly maps.

scikit-learn's :class:`~sklearn.pipeline.Pipeline` forwards ``predict``,
``score_samples`` and ``decision_function`` to its last step, but not methods
it does not know. :class:`AnomalyPipeline` adds ``anomaly_map`` and
``predict_mask``, so that ``make_pipeline(FeatureExtractor(), CFlowAD())``
localises defects on raw images.
"""

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
        :class:`~sklearn.pipeline.Pipeline`. A folder, a file, a list of
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
            return super().fit(X, y, **params)
        if y is not None or params:
            raise ValueError("a streamed fit takes neither y nor fit parameters.")
        extractor = self[0]
        stream = FeatureStream(extractor, X)
        extractor.fit(next(iter(stream.image_batches())))
        self[-1].fit(stream)
        return self

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
