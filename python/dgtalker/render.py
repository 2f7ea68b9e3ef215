"""The inference API: speech (+ cameras) -> a talking-head video.

    import dgtalker
    talker = dgtalker.load_talker("id007.safetensors")
    video = talker.render("speech.wav", dgtalker.camera.spiral(100, width=512, height=512))
    video.save("talk.mp4")                    # h264 + aac, the speech muxed in sync
    video.frames                              # uint8 [T, H, W, 3]
    dgtalker.render("speech.wav", dgtalker.camera.orbit(20, 5, width=256, height=256))  # the demo talker

Frames come at ``fps`` for the whole speech (``ceil(duration * fps)`` frames). The
audio may be a path (anything ffmpeg reads), ``(samples, rate)``, or a 1-D array with
``sample_rate=``. The camera may be None (the talker's own framing), a
``dgtalker.camera.Camera`` (every ``dgtalker.camera`` helper returns one; it carries
its image size, so the video comes at that size), a dataset (its own tracked cameras,
read at each frame's time; the torso then follows that clip's head motion), or a bare
``(viewmat, K)`` together with the ``width`` and ``height`` its K was made for.

The implementation is ``dgtalker.inference`` (which ``Talker.render`` / ``Talker.stream``
also use); this module adds the shipped talker and the callable module.
"""
from __future__ import annotations

from .inference import RenderError, Video, speech
from .talker import load_talker

__all__ = ["render", "load_talker", "Video", "RenderError", "speech"]


def render(audio, camera=None, **kw) -> Video:
    """``load_talker()`` (the shipped demo talker) ``.render(audio, camera, **kw)``."""
    return load_talker(None).render(audio, camera, **kw)


class _CallableModule(__import__("types").ModuleType):
    """``dgtalker.render`` is this module and also the function ``render``: importing the
    module (``from dgtalker.render import Video``) must not shadow the call."""

    def __call__(self, audio, camera=None, **kw) -> Video:
        return render(audio, camera, **kw)


__import__("sys").modules[__name__].__class__ = _CallableModule
