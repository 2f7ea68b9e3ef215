"""Triangle-mesh renderer for the synthetic corpus (OpenGL 3.3 through moderngl).

This renderer is deliberately independent of dgtalker's Gaussian rasterizer, so no
model can score well by sharing its quirks. It runs headless through EGL; on a
machine without a GPU, Mesa's llvmpipe does the work on the CPU.

Conventions match the rest of dgtalker: OpenCV cameras (x right, y down, z forward),
world-to-camera 4x4 extrinsics and 3x3 pixel intrinsics with pixel (row i, col j)
centred at (j + 0.5, i + 0.5). GL's pixel centres sit at the same half-integer
positions, so the projection below maps them one to one; only the row order is
flipped on read-back (GL stores the bottom row first).

Anti-aliasing: the scene is drawn at ``supersample`` (k) times the output size and
averaged over k x k blocks (k = 2: 4 samples per pixel), with mipmapped,
anisotropically filtered textures for the texture detail. MSAA would be the usual
choice on a GPU, but llvmpipe shades every MSAA sample and was several times slower
than plain supersampling here.
Textures are mipmapped with anisotropic filtering.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_VERT = """
#version 330
uniform mat4 w2c;          // world (head frame) to OpenCV camera
uniform vec4 intr;         // fx, fy, cx, cy in output pixels
uniform vec2 size;         // output width, height in pixels
uniform vec2 clip;         // near, far (metres)
in vec3 in_pos;            // [V, 3] head-frame position
in vec3 in_nrm;            // [V, 3] head-frame normal
in vec2 in_uv;             // [V, 2]
in vec4 in_tint;           // [V, 4] rgb multiplier, a = ambient occlusion
in vec4 in_label;          // [V, 4] head, lower face, upper face, person
out vec3 v_pos; out vec3 v_nrm; out vec2 v_uv; out vec4 v_tint; out vec4 v_label;
void main() {
    vec4 pc = w2c * vec4(in_pos, 1.0);
    float z = pc.z;
    float n = clip.x, f = clip.y;
    // pixel u = fx x/z + cx, v = fy y/z + cy; NDC x = 2u/W - 1, NDC y = 1 - 2v/H
    gl_Position = vec4(2.0 * (intr.x * pc.x + intr.z * z) / size.x - z,
                       z - 2.0 * (intr.y * pc.y + intr.w * z) / size.y,
                       (z * (f + n) - 2.0 * f * n) / (f - n),
                       z);
    v_pos = in_pos; v_nrm = in_nrm; v_uv = in_uv; v_tint = in_tint; v_label = in_label;
}
"""

_FRAG_SHADE = """
#version 330
uniform sampler2D tex;
uniform vec3 cam_pos;        // camera centre in the head frame
uniform vec3 spec_pos;       // where the highlights are seen from (normally cam_pos)
uniform vec3 cam_z;          // camera forward axis in the head frame
uniform vec3 light_dir[3];   // unit vectors towards the lights, head frame
uniform vec3 light_col[3];
uniform vec3 ambient_up;     // sky / ground ambient, hemisphere lighting
uniform vec3 ambient_down;
uniform vec3 up_dir;         // world up expressed in the head frame
uniform float spec_strength;
uniform float shininess;
uniform float wrap;          // wrap lighting: cheap stand-in for subsurface scattering
in vec3 v_pos; in vec3 v_nrm; in vec2 v_uv; in vec4 v_tint; in vec4 v_label;
layout(location = 0) out vec4 frag;
layout(location = 1) out vec4 label;
layout(location = 2) out float depth;
void main() {
    vec3 albedo = texture(tex, v_uv).rgb * v_tint.rgb;
    vec3 n = normalize(v_nrm);
    vec3 view = normalize(cam_pos - v_pos);
    if (dot(n, view) < 0.0) n = -n;   // two-sided: the mouth pocket is seen from inside
    float hemi = 0.5 + 0.5 * dot(n, up_dir);
    vec3 col = albedo * mix(ambient_down, ambient_up, hemi) * v_tint.a;
    for (int i = 0; i < 3; ++i) {
        float d = max((dot(n, light_dir[i]) + wrap) / (1.0 + wrap), 0.0);
        vec3 h = normalize(light_dir[i] + normalize(spec_pos - v_pos));
        float s = pow(max(dot(n, h), 0.0), shininess) * spec_strength * step(0.0, dot(n, light_dir[i]));
        col += light_col[i] * (albedo * d * mix(1.0, v_tint.a, 0.6) + s * v_tint.a);
    }
    // display gamma (albedos and lights are linear)
    frag = vec4(pow(clamp(col, 0.0, 1.0), vec3(1.0 / 2.2)), 1.0);
    label = v_label;
    depth = dot(v_pos - cam_pos, cam_z);
}
"""


_VERT_QUAD = """
#version 330
in vec2 in_xy;
void main() { gl_Position = vec4(in_xy, 0.0, 1.0); }
"""

_FRAG_DOWN = """
#version 330
uniform sampler2D src_rgb;    // premultiplied colour, alpha = coverage
uniform sampler2D src_label;
uniform sampler2D src_depth;
uniform int ss;               // samples per output pixel along each axis
uniform vec3 background;      // display-space rgb
layout(location = 0) out vec4 rgb;
layout(location = 1) out vec4 label;
layout(location = 2) out float depth;
void main() {
    ivec2 base = ivec2(gl_FragCoord.xy) * ss;
    vec4 c = vec4(0.0), l = vec4(0.0);
    float d = 1e30;
    for (int i = 0; i < ss; ++i) for (int j = 0; j < ss; ++j) {
        ivec2 q = base + ivec2(i, j);
        vec4 ci = texelFetch(src_rgb, q, 0);
        c += ci;
        l += texelFetch(src_label, q, 0);
        if (ci.a > 0.0) d = min(d, texelFetch(src_depth, q, 0).r);
    }
    float n = float(ss * ss);
    c /= n;
    rgb = vec4(c.rgb + (1.0 - c.a) * background, 1.0);
    label = l / n;
    depth = d;
}
"""


@dataclass
class Material:
    spec_strength: float = 0.08
    shininess: float = 24.0
    wrap: float = 0.25


@dataclass
class Mesh:
    """A triangle mesh whose topology and attributes are fixed; positions and
    normals change every frame."""

    name: str
    faces: np.ndarray  # [F, 3] int32
    uv: np.ndarray  # [V, 2] float32
    tint: np.ndarray  # [V, 4] float32
    label: np.ndarray  # [V, 4] float32
    texture: str  # key into the renderer's textures
    material: Material = field(default_factory=Material)
    cull: bool = True  # closed, outward-facing surface: back faces can be skipped


@dataclass
class Lighting:
    """Lights fixed in the physical world (so turning the head changes its shading)."""

    directions: np.ndarray  # [3, 3] unit vectors towards the lights, world frame
    colors: np.ndarray  # [3, 3] linear rgb
    ambient_up: np.ndarray  # [3]
    ambient_down: np.ndarray  # [3]


def _ctx():
    try:
        import moderngl
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the synthetic renderer needs moderngl (pip install moderngl) and an EGL "
            "driver (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri)"
        ) from exc
    try:
        return moderngl.create_standalone_context(backend="egl")
    except Exception as exc:  # noqa: BLE001 - any driver failure reads the same to the user
        raise RuntimeError(
            "could not create a headless OpenGL context through EGL "
            f"({exc}); install Debian packages libegl1 libegl-mesa0 libgl1-mesa-dri"
        ) from exc


class MeshRenderer:
    """Renders a fixed set of meshes for many cameras and poses.

    Usage: ``r = MeshRenderer(meshes, textures, width, height)``, then per frame
    ``r.update(positions, normals)`` and ``r.render(K, w2c, lighting, light_rot)``.
    """

    def __init__(self, meshes: list[Mesh], textures: dict[str, np.ndarray], width: int,
                 height: int, background=(0.0, 0.0, 0.0), supersample: int = 2,
                 clip=(0.05, 20.0)):
        import moderngl

        if width < 8 or height < 8:
            raise ValueError(f"image size must be at least 8x8 pixels, got {width}x{height}")
        self.width, self.height = int(width), int(height)
        self.ss = int(supersample)
        self.background = tuple(float(c) for c in background)
        self.clip = tuple(float(c) for c in clip)
        self.ctx = _ctx()
        ctx = self.ctx
        ctx.enable(moderngl.DEPTH_TEST)
        # the y flip in the projection mirrors the winding: outward faces are clockwise
        ctx.front_face = "cw"
        self.meshes = meshes
        W, H = self.width * self.ss, self.height * self.ss
        # One pass writes colour, labels and depth together (multiple render targets);
        # MSAA samples are resolved (averaged) for all three targets at once.
        # Supersampled targets are textures, averaged down by a second pass (on the
        # GL side: a numpy box filter of three 4-channel images costs more than the
        # scene itself).
        self._src = [ctx.texture((W, H), 4, dtype="f1"), ctx.texture((W, H), 4, dtype="f1"),
                     ctx.texture((W, H), 1, dtype="f4")]
        for t in self._src:
            t.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self._fb_ss = ctx.framebuffer(color_attachments=self._src,
                                      depth_attachment=ctx.depth_renderbuffer((W, H)))
        w, h = self.width, self.height
        self._fb = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((w, h), 4, dtype="f1"), ctx.renderbuffer((w, h), 4, dtype="f1"),
                               ctx.renderbuffer((w, h), 1, dtype="f4")])
        self._prog_down = ctx.program(vertex_shader=_VERT_QUAD, fragment_shader=_FRAG_DOWN)
        quad = ctx.buffer(np.array([-1, -1, 3, -1, -1, 3], dtype="f4").tobytes())
        self._quad = ctx.vertex_array(self._prog_down, [(quad, "2f", "in_xy")])
        for i, name in enumerate(("src_rgb", "src_label", "src_depth")):
            self._prog_down[name].value = i
        self._prog_down["ss"].value = self.ss
        self._prog_down["background"].value = self.background
        self._prog = ctx.program(vertex_shader=_VERT, fragment_shader=_FRAG_SHADE)
        self._textures = {}
        for key, img in textures.items():
            img = np.ascontiguousarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
                raise ValueError(f"texture {key!r} must be uint8 [H, W, 3|4], got {img.dtype} {img.shape}")
            t = ctx.texture((img.shape[1], img.shape[0]), img.shape[2], img.tobytes())
            t.build_mipmaps()
            t.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
            t.anisotropy = 8.0
            t.repeat_x, t.repeat_y = True, False
            self._textures[key] = t
        self._vaos = []
        for m in meshes:
            n = len(m.uv)
            pos = ctx.buffer(reserve=n * 12, dynamic=True)
            nrm = ctx.buffer(reserve=n * 12, dynamic=True)
            static = np.concatenate([m.uv, m.tint, m.label], axis=1).astype("f4")
            sbuf = ctx.buffer(static.tobytes())
            ibuf = ctx.buffer(np.ascontiguousarray(m.faces, dtype="i4").tobytes())
            content = [(pos, "3f", "in_pos"), (nrm, "3f", "in_nrm"),
                       (sbuf, "2f 4f 4f", "in_uv", "in_tint", "in_label")]
            vaos = [ctx.vertex_array(self._prog, content, index_buffer=ibuf)]
            self._vaos.append((pos, nrm, vaos))

    # -- per frame ---------------------------------------------------------------------
    def update(self, positions: list[np.ndarray], normals: list[np.ndarray]) -> None:
        """Upload this frame's geometry: one [V, 3] array of each per mesh, head frame."""
        for (pos, nrm, _), p, n in zip(self._vaos, positions, normals):
            pos.write(np.ascontiguousarray(p, dtype="f4").tobytes())
            nrm.write(np.ascontiguousarray(n, dtype="f4").tobytes())

    def _set_camera(self, prog, K, w2c, s):
        s = float(s)
        # Supersampled pixel (row i, col j) has centre (j+0.5, i+0.5) in its own units;
        # scaling K by s keeps the output pixel grid aligned: s x s blocks average
        # back to the pixel whose centre is the block centre.
        if "intr" in prog:
            prog["intr"].value = (K[0, 0] * s, K[1, 1] * s, K[0, 2] * s, K[1, 2] * s)
            prog["size"].value = (self.width * s, self.height * s)
            prog["clip"].value = self.clip
        prog["w2c"].write(np.ascontiguousarray(w2c.T, dtype="f4").tobytes())

    def render(self, K: np.ndarray, w2c: np.ndarray, lighting: Lighting,
               head_to_world_rot: np.ndarray, specular_from: np.ndarray | None = None):
        """Render the current geometry for one camera.

        Returns ``rgb`` uint8 [H, W, 3]; ``labels`` float32 [H, W, 4] in [0, 1]: the
        coverage of the head, lower-face, upper-face and person labels, anti-aliased
        exactly like the image; ``depth`` float32 [H, W]: the nearest camera z among a
        pixel's samples (inf on background), for landmark visibility.
        ``specular_from``: another camera's world-to-camera matrix whose view direction
        the highlights take (measures how much of an image is view-dependent).
        """
        import moderngl

        R = np.asarray(head_to_world_rot, dtype=np.float64)
        cam_pos = -w2c[:3, :3].T @ w2c[:3, 3]
        p = self._prog
        self._set_camera(p, K, w2c, self.ss)
        p["cam_pos"].value = tuple(cam_pos)
        spec = cam_pos if specular_from is None else -specular_from[:3, :3].T @ specular_from[:3, 3]
        p["spec_pos"].value = tuple(spec)
        p["cam_z"].value = tuple(w2c[2, :3])
        # lights live in the world; the meshes live in the head frame
        dirs = (R.T @ lighting.directions.T).T
        p["light_dir"].write(np.ascontiguousarray(dirs, dtype="f4").tobytes())
        p["light_col"].write(np.ascontiguousarray(lighting.colors, dtype="f4").tobytes())
        p["ambient_up"].value = tuple(lighting.ambient_up)
        p["ambient_down"].value = tuple(lighting.ambient_down)
        p["up_dir"].value = tuple(R.T @ np.array([0.0, 1.0, 0.0]))

        fb = self._fb_ss
        fb.use()
        fb.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        for m, (_, _, vaos) in zip(self.meshes, self._vaos):
            if m.cull:
                self.ctx.enable(moderngl.CULL_FACE)
            else:
                self.ctx.disable(moderngl.CULL_FACE)
            self._textures[m.texture].use(0)
            p["spec_strength"].value = m.material.spec_strength
            p["shininess"].value = m.material.shininess
            p["wrap"].value = m.material.wrap
            vaos[0].render()
        self.ctx.disable(moderngl.CULL_FACE | moderngl.DEPTH_TEST)
        self._fb.use()
        for i, t in enumerate(self._src):
            t.use(i)
        self._quad.render()
        self.ctx.enable(moderngl.DEPTH_TEST)
        fb = self._fb
        W, H = self.width, self.height
        rgb = np.frombuffer(fb.read(components=3, attachment=0), np.uint8).reshape(H, W, 3)[::-1].copy()
        lab = np.frombuffer(fb.read(components=4, attachment=1), np.uint8).reshape(H, W, 4)[::-1]
        dep = np.frombuffer(fb.read(components=1, attachment=2, dtype="f4"), np.float32).reshape(H, W)[::-1]
        labels = lab.astype(np.float32) / 255.0
        dep = np.where(dep > 1e29, np.inf, dep).astype(np.float32)
        return {"rgb": rgb, "labels": labels.astype(np.float32), "depth": dep.astype(np.float32)}

    def release(self) -> None:
        self.ctx.release()
