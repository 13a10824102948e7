"""ONNX export of a fitted pipeline: raw pixels in, anomaly maps and scores out.

:func:`export_onnx` writes one graph for onnxruntime (or any ONNX runtime,
from C++ or C# too) that does everything the fitted pipeline does to images
of its frame: the extractor's scaling and normalisation, the encoder, and the
detector's post-processing (CFlowAD: neighbourhood averaging, whitening,
flows, aggregation and upsampling; PaDiM: Mahalanobis distances, upsampling
and smoothing). The graph is traced from the modules the estimators score
with (:class:`~skcflow.features.PixelEncoder`,
:class:`~skcflow.cflow.CFlowMaps`, :class:`~skcflow.padim.PaDiMMaps`), so
there is one implementation of each computation. Before the file is written,
onnxruntime scores check images with it and must reproduce skcflow's maps.

The graph's contract:

- input ``images``: ``uint8`` (or ``uint16`` for models fitted on 16-bit
  images), shape ``(N, H, W, 3)``, RGB (grey images repeated over the
  channels), ``H x W`` the frame (``frame_size`` in the metadata), any ``N``;
- output ``anomaly_map``: ``float32``, ``(N, H, W)``, higher where more
  anomalous;
- output ``anomaly_score``: ``float32``, ``(N,)``: higher is more anomalous;
  an image is anomalous when ``anomaly_score > -offset`` and a pixel when
  ``anomaly_map > pixel_threshold``;
- metadata ``skcflow`` (a JSON string in the model's metadata properties):
  ``method``, ``maps_score_images`` (whether ``anomaly_score`` is the map's
  maximum), ``offset``, ``pixel_threshold``, ``frame_size``,
  ``keep_aspect``, ``bit_depth``, ``input_dtype``, ``provenance``, and the
  training images' leave-one-out ``training_scores`` and
  ``training_map_maxima``, from which p-values and new thresholds follow
  (:mod:`skcflow.calibration`).
"""

import contextlib
import io
import json

import numpy as np
import torch
from sklearn.utils import Bunch
from torch import nn

from ..persistence import atomic_write, provenance
from ..runtime import FORMAT, FORMAT_VERSION
# The largest difference, relative to a map's range, that the check after
# export accepts between onnxruntime's maps and skcflow's. The runtimes'
# convolutions round differently (about 1e-5 of the features), and a
# well-trained CFlowAD's flows amplify that: on MVTec bottle the default
# pipeline's maps differ by 8.5e-5 of their range
# (benchmarks/results/export.md). A broken graph differs by far more.
_TOLERANCE = 1e-3


class PipelineGraph(nn.Module):
    """A fitted pipeline as one module: images to ``(anomaly_map, anomaly_score)``."""

    def __init__(self, pixel_encoder, maps):
        super().__init__()
        self.pixel_encoder, self.maps = pixel_encoder, maps

    def forward(self, images):
        pyramid = self.pixel_encoder(images)
        if hasattr(self.maps, "maps_and_scores"):
            maps, scores = self.maps.maps_and_scores(*pyramid)
        else:
            maps = self.maps(*pyramid)
            scores = maps.flatten(1).amax(1)
        # Scores of their own precision, as the detectors' are.
        return maps.float(), scores.float()


def _graph(pipeline):
    from ..pipeline import AnomalyPipeline

    if not isinstance(pipeline, AnomalyPipeline) or len(pipeline) != 2:
        raise TypeError("export_onnx exports a pipeline of a FeatureExtractor and a detector, as "
                        "'skcflow fit' writes and make_pipeline builds.")
    extractor, detector = pipeline[0], pipeline[-1]
    name = type(detector).__name__
    if name == "SPADE":
        size = detector.model_size_bytes_ / 1e6
        raise ValueError(
            f"SPADE is not exported: its model is its whole training gallery ({size:.0f} MB here, "
            "growing with every training image), searched for nearest neighbours at every "
            "position, which would make the graph as large and slow; export PaDiM or CFlowAD, "
            "or score SPADE with skcflow."
        )
    if extractor.inference_dtype_ != "float32":
        raise ValueError(
            f"the graph computes in float32, but this pipeline's FeatureExtractor encodes in "
            f"{extractor.inference_dtype_}; set_params(inference_dtype='float32') and fit it "
            "again first (its identity does not change: the detector stays valid)."
        )
    if getattr(detector, "inference_dtype", "float32") != "float32":
        raise ValueError(
            f"the graph computes in float32, but this CFlowAD scores in "
            f"{detector.inference_dtype}; set_params(inference_dtype='float32') first (no refit)."
        )
    # Exported on the CPU; the estimators keep their own devices.
    return PipelineGraph(extractor._pixel_encoder(), detector._maps()).cpu().eval()


def _metadata(pipeline):
    extractor, detector = pipeline[0], pipeline[-1]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": type(detector).__name__,
        "maps_score_images": detector._maps_score_images(),
        "offset": detector.offset_,
        "pixel_threshold": detector.pixel_threshold_,
        "training_scores": detector.training_scores_.tolist(),
        "training_map_maxima": detector.training_map_maxima_.tolist(),
        "frame_size": list(extractor.frame_size_),
        "keep_aspect": bool(extractor.keep_aspect),
        "bit_depth": extractor.bit_depth_,
        "input_dtype": "uint8" if extractor.bit_depth_ == 8 else "uint16",
        "provenance": provenance(pipeline),
    }


def _check_images(metadata, n_images=4):
    """Images of the frame to compare onnxruntime with skcflow on: smooth
    grey levels with some texture, from dark to bright."""
    height, width = metadata["frame_size"]
    full = 2 ** metadata["bit_depth"] - 1
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
    images = []
    for level in np.linspace(0.2, 0.8, n_images):
        texture = 0.1 * np.sin(12 * rows + rng.uniform(0, 6)) * np.cos(9 * cols)
        noise = rng.normal(0, 0.02, (height, width, 3))
        images.append(np.clip(level + texture[..., None] + noise, 0, 1))
    return np.rint(np.stack(images) * full).astype(metadata["input_dtype"])


def export_onnx(model, path, check_images=None):
    """Export a fitted pipeline to an ONNX file scored by onnxruntime, without torch.

    Parameters
    ----------
    model : AnomalyPipeline
        A fitted ``FeatureExtractor`` followed by a fitted :class:`~skcflow.CFlowAD`
        or :class:`~skcflow.PaDiM`. SPADE is refused: its model is its
        training gallery.
    path : str or path-like
        The ``.onnx`` file to write (atomically).
    check_images : ndarray of shape (n, H, W, 3), default=None
        Images of the frame that onnxruntime scores before the file is
        written, to check that it reproduces skcflow's maps; by default a
        few synthetic ones.

    Returns
    -------
    report : Bunch
        ``size_bytes`` (of the file), ``n_checked`` (check images) and
        ``map_difference``: the largest difference between onnxruntime's
        and skcflow's maps of the check images, relative to the range of
        skcflow's maps.

    Raises
    ------
    ValueError
        For SPADE, for an extractor or a CFlowAD computing in half
        precision, or if onnxruntime
        does not reproduce skcflow's maps to 1e-3 of their range (on MVTec
        bottle, the default pipelines' maps agree to 8.5e-5 of their range
        for CFlowAD and 5e-7 for PaDiM).

    Examples
    --------
    >>> import os, tempfile
    >>> from skcflow import FeatureExtractor, PaDiM, export_onnx, make_defects, make_pipeline
    >>> from skcflow.runtime import OnnxDetector
    >>> data = make_defects(n_train=8, n_test=2, image_size=64, random_state=0)
    >>> pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
    ...                      PaDiM(n_features=40, device="cpu", random_state=0)).fit(data.train.images)
    >>> path = os.path.join(tempfile.mkdtemp(), "padim.onnx")
    >>> report = export_onnx(pipe, path)  # doctest: +ELLIPSIS
    >>> OnnxDetector(path).anomaly_map(data.test.images).shape
    (2, 64, 64)
    """
    import onnx

    graph = _graph(model)
    metadata = _metadata(model)
    if check_images is None:
        check_images = _check_images(metadata)
    example = torch.from_numpy(np.ascontiguousarray(check_images[:2]))
    # The exporter reports its progress on stdout; skcflow's users see the result.
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        program = torch.onnx.export(
            graph, (example,), input_names=["images"],
            output_names=["anomaly_map", "anomaly_score"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}, dynamo=True,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {"skcflow": json.dumps(metadata, sort_keys=True)})
    proto.doc_string = (f"skcflow {metadata['method']} pipeline: images -> anomaly_map, "
                        "anomaly_score (see the 'skcflow' metadata).")
    serialized = proto.SerializeToString()
    difference = _verify(serialized, graph, check_images)

    def write(temporary):
        with open(temporary, "wb") as f:
            f.write(serialized)

    atomic_write(path, write)
    return Bunch(size_bytes=len(serialized), n_checked=len(check_images), map_difference=difference)


def _verify(serialized, graph, images):
    """Largest relative difference between onnxruntime's maps and the module's."""
    import onnxruntime

    session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    ours, _ = session.run(None, {"images": images})
    with torch.inference_mode():
        expected, _ = graph(torch.from_numpy(np.ascontiguousarray(images)))
    expected = expected.numpy()
    scale = max(float(expected.max() - expected.min()), 1e-12)
    difference = float(np.abs(ours - expected).max()) / scale
    if not difference <= _TOLERANCE:
        raise ValueError(
            f"onnxruntime's maps differ from skcflow's by {difference:.2g} of their range on the "
            f"check images (more than {_TOLERANCE:g}); the ONNX file was not written."
        )
    return difference
