"""Vision: config (torch-free), client image decoding and limits, the CLIP runtime."""

from modalities._lazy import lazy_exports

_EXPORTS = {
    "ClipConfig": "config",
    "ImageLimits": "decode",
    "decode_image": "decode",
    "ClipRuntime": "clip",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
