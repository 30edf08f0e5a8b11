"""CPU kernels for the denoisers' hot spots: GroupNorm + scale-shift + SiLU as one pass, the
output layer's 3x3 convolution to a few channels, and the interleaving copy of
``genmodels.nn.upsample_conv`` (forward and backward each), built into one extension.

``group_norm_act(x, norm, scale=None, shift=None, silu=True)`` computes

    y = norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None];  SiLU(y) if silu

with ``norm`` an ``nn.GroupNorm`` (its weights, groups and eps; state dicts are unchanged). On a
CPU, for float32/float64 tensors in channels_last layout, it runs the C++ kernel in
``csrc/group_norm_act.cpp``. Anywhere else (CUDA, NCHW, bf16, kernels not built) it runs the same
math in PyTorch ops; the two agree to float rounding (tests/test_fused.py).
On the demo UNet the kernel makes a training step ~10 % faster (docs/BENCHMARKS.md).

``output_conv(x, conv)`` is ``conv(x)`` for a 3x3, stride-1, padding-1 ``nn.Conv2d`` with at most 8
output channels (``csrc/output_conv.cpp``, same conditions): oneDNN runs that shape at a few percent of
the machine's peak, this kernel at the speed of reading x. ``interleave_forward/backward`` serve
``upsample_conv`` under the same conditions (``applies``).

Building is explicit, never a stall in the first forward: ``genmodels build-kernels`` (``build()``;
``scripts/setup`` runs it) compiles them once, in about a minute, into ``build_dir()`` under
``$GENMODELS_KERNELS_DIR`` (default ``$GENMODELS_CACHE/ext``, i.e. ``~/.cache/genmodels/ext``). At run
time ``load()`` only imports that build.

``GENMODELS_FUSED_KERNELS``: ``auto`` (default: use the prebuilt kernels; when there are none, say so
in one line on stderr, once per process, and run the PyTorch ops), ``0`` (never use the kernels, say
nothing), ``1`` (the kernels are required: build them now if missing; an error if that is impossible).

The kernels' backward is not itself differentiable: a backward pass with ``create_graph=True``
through them raises at once (``first_order_only``); set ``GENMODELS_FUSED_KERNELS=0`` for such uses.
"""

import contextlib
import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genmodels.errors import ConfigError, KernelBuildError
from genmodels.paths import kernels_dir

CSRC = Path(__file__).parent / "csrc"
SOURCES = [CSRC / name for name in ("module.cpp", "group_norm_act.cpp", "output_conv.cpp", "phase_interleave.cpp")]
HEADERS = [CSRC / "common.h"]
OUTPUT_CONV_MAX_CHANNELS = 8
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
ENV = "GENMODELS_FUSED_KERNELS"
NAME = "genmodels_kernels"  # the extension's module name (TORCH_EXTENSION_NAME in csrc/module.cpp)
SLOWER = "about 1.1x slower training"  # docs/BENCHMARKS.md: the kernels make a step 1.12-1.16x faster
NOT_BUILT = (f"genmodels: C++ CPU kernels not built; using PyTorch ops ({SLOWER}). "
             "Build them once with: genmodels build-kernels")

_lock = threading.RLock()  # load() may build() under it
_module = None  # the loaded extension
_unavailable: str | None = None  # why it is not in use, once said on stderr (auto mode)


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise ConfigError(f"{ENV} must be auto, 0 or 1, got {value!r}")
    return value


def build_dir() -> Path:
    """Where the compiled kernels live: keyed by the sources, flags, torch, Python and CPU, because
    -march=native code must not be reused on another processor."""
    key = hashlib.sha256()
    for part in (*(f.read_bytes() for f in SOURCES + HEADERS), " ".join(CFLAGS).encode(),
                 torch.__version__.encode(), sys.version.encode(), _cpu_model().encode(),
                 platform.machine().encode()):
        key.update(part)
    return kernels_dir() / f"kernels-{key.hexdigest()[:16]}"


def library() -> Path:
    """The compiled extension's file in ``build_dir()`` (there once built)."""
    return build_dir() / (NAME + (".pyd" if sys.platform == "win32" else ".so"))


def _cpu_model() -> str:
    """The first processor's model name and instruction-set flags."""
    with contextlib.suppress(OSError):
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        return "\n".join(line for line in first.splitlines() if line.startswith(("model name", "flags")))
    return platform.processor()


def load():
    """The prebuilt extension, or ``None`` when the kernels are off or not built (then, in ``auto``
    mode, one line on stderr, once per process). Never compiles, except under
    ``GENMODELS_FUSED_KERNELS=1`` with no build. Safe to call from several threads."""
    global _module, _unavailable
    if _module is not None:
        return _module
    setting = mode()
    required = setting == "1"
    if setting == "0" or (_unavailable is not None and not required):
        return None
    with _lock:
        if _module is not None:
            return _module
        try:
            _module = _import(library())
        except (ImportError, OSError) as exc:
            if required:
                try:
                    _module = build()
                except KernelBuildError as failure:
                    raise KernelBuildError(f"{ENV}=1 but the C++ CPU kernels could not be built: {failure}; "
                                           f"set {ENV}=auto to run PyTorch ops instead") from failure
            elif _unavailable is None:
                if isinstance(exc, FileNotFoundError):
                    _unavailable, line = "not built", NOT_BUILT
                else:  # a build from a crashed or concurrent compile: build() replaces it
                    _unavailable = f"could not be loaded ({exc})"
                    line = (f"genmodels: C++ CPU kernels in {library()} could not be loaded ({exc}); using "
                            f"PyTorch ops ({SLOWER}). Rebuild them with: genmodels build-kernels")
                print(line, file=sys.stderr, flush=True)
    return _module


def _import(path: Path):
    """The extension module compiled at ``path``, imported as torch's loader does (torch is already
    imported, so the libtorch symbols it needs are there)."""
    if not path.exists():
        raise FileNotFoundError(f"no {path}")
    spec = importlib.util.spec_from_file_location(NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build():
    """Compile the kernels into ``build_dir()`` now, unless they are built there already, and return
    the module (``genmodels build-kernels`` and ``scripts/setup`` call this; about a minute, once per
    source, torch, Python and CPU). Raises ``KernelBuildError`` when they cannot be built here."""
    global _module, _unavailable
    with _lock:
        if _module is None:
            try:
                _module = _import(library())
            except FileNotFoundError:
                _module = _compile()
            except (ImportError, OSError):  # a truncated file: ninja would see it as up to date
                library().unlink()
                _module = _compile()
            _unavailable = None
    return _module


def _compile():
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C++ compiler: {compiler!r} is not on PATH; install one "
                               f"(apt-get install g++), then run genmodels build-kernels")
    target = build_dir()
    target.mkdir(parents=True, exist_ok=True)
    print(f"genmodels: compiling the fused CPU kernels once (about a minute) into {target}",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    # pip's ninja lands next to the interpreter, which is not on PATH unless the venv is activated.
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    try:
        module = cpp_extension.load(name=NAME, sources=[str(f) for f in SOURCES],
                                    extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                                    build_directory=str(target), verbose=False)
    except Exception as exc:  # a compile error, no ninja: name the first error, keep the whole log
        log = target / "build.log"
        log.write_text(str(exc))
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        first = next((line for line in lines if "error" in line.lower()), lines[-1])
        raise KernelBuildError(f"the C++ kernels did not compile ({first}); full log in {log}") from exc
    finally:
        os.environ["PATH"] = path
    print(f"genmodels: fused kernels ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return module


def status() -> str:
    """One line for logs and benchmark tables: whether the kernels are in use and why not."""
    if mode() == "0":
        return f"off ({ENV}=0)"
    if load() is not None:
        return "on"
    return f"{_unavailable}; build them with: genmodels build-kernels"


def applies(x: Tensor) -> bool:
    """Whether the kernels run on ``x`` (a CPU float32/float64 channels_last tensor, kernels built and
    not switched off, no autocast); the other inputs of a kernel follow x."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.ndim == 4
            and x.is_contiguous(memory_format=torch.channels_last) and mode() != "0"
            and not torch.is_autocast_enabled("cpu") and load() is not None)


def group_norm_act(x: Tensor, norm: nn.GroupNorm, scale: Tensor | None = None, shift: Tensor | None = None,
                   *, silu: bool = True) -> Tensor:
    """``norm(x)``, modulated by ``(1 + scale, shift)`` of shape ``[B, C]`` when given, then SiLU."""
    if (scale is None) != (shift is None):
        raise ValueError("group_norm_act takes scale and shift together (or neither)")
    if applies(x):
        return _GroupNormAct.apply(x, norm.num_groups, norm.weight, norm.bias,
                                   None if scale is None else scale.contiguous(),
                                   None if shift is None else shift.contiguous(), silu, norm.eps)
    return reference(x, norm, scale, shift, silu=silu)


def reference(x: Tensor, norm: nn.GroupNorm, scale: Tensor | None = None, shift: Tensor | None = None,
              *, silu: bool = True) -> Tensor:
    """The same computation in PyTorch ops: the fallback and the kernel's test oracle."""
    h = norm(x)
    if scale is not None:
        h = torch.addcmul(shift[:, :, None, None], h, 1 + scale[:, :, None, None])
    return F.silu(h) if silu else h


def first_order_only(backward):
    """Marks a kernel's backward (computed without a graph) so that ``create_graph=True`` raises at
    once. Not torch's ``once_differentiable``: its guard sits on a detached branch that
    ``torch.autograd.grad(..., inputs=[some parameters])`` can prune, and the second derivative then
    silently misses every term through the kernel."""
    @functools.wraps(backward)
    def guarded(ctx, *grads):
        if torch.is_grad_enabled():  # the engine enables grad mode in backward only for create_graph
            raise RuntimeError(f"genmodels' fused CPU kernels have no second derivative (a backward pass with "
                               f"create_graph=True went through {type(ctx).__name__.removesuffix('Backward')}); "
                               f"set {ENV}=0 to run the PyTorch ops instead")
        return backward(ctx, *grads)
    return guarded


def output_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x)``; by the kernel for a 3x3, stride-1, zero-padding-1 conv to at most 8 channels."""
    if (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and conv.out_channels <= OUTPUT_CONV_MAX_CHANNELS and x.dtype == conv.weight.dtype and applies(x)):
        # the kernel reads the weight as [O, 3, 3, C]: each tap's channel vector contiguous
        return _OutputConv.apply(x, conv.weight.permute(0, 2, 3, 1).contiguous(), conv.bias)
    return conv(x)


class _OutputConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _module.output_conv_forward(x, weight, bias)

    @staticmethod
    @first_order_only
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grads = _module.output_conv_backward(grad, x, weight, ctx.has_bias)
        return grads[0], grads[1], grads[2] if ctx.has_bias else None


class _GroupNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, groups, weight, bias, scale, shift, silu, eps):
        out, mean, rstd = _module.forward(x, groups, weight, bias, scale, shift, silu, eps)
        ctx.save_for_backward(x, mean, rstd, weight, bias, scale, shift)
        ctx.groups, ctx.silu = groups, silu
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad):
        x, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
        dx, sum_dy, sum_dy_xhat = _module.backward(grad, x, mean, rstd, ctx.groups, weight, bias,
                                                   scale, shift, ctx.silu)
        # y = (1 + scale) * (weight * xhat + bias) + shift, summed over pixels per (image, channel);
        # weight and bias are None for GroupNorm(affine=False): weight 1, bias 0
        gain = 1 if scale is None else 1 + scale
        d_weight = None if weight is None else (gain * sum_dy_xhat).sum(0)
        d_bias = None if bias is None else (gain * sum_dy).sum(0)
        d_scale = None
        if scale is not None:
            d_scale = sum_dy_xhat if weight is None else weight * sum_dy_xhat
            d_scale = d_scale if bias is None else d_scale + bias * sum_dy
        d_shift = None if shift is None else sum_dy
        return dx, None, d_weight, d_bias, d_scale, d_shift, None, None
