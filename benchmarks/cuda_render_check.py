"""The demo talker rendered on the GPU (channels-last synthesis, and compiled) against
the CPU render of the same speech: a check that the fast inference paths draw the
same frames.

    python benchmarks/cuda_render_check.py"""
import torch

import dgtalker
from dgtalker.talker import DEFAULT_TALKER_PATH


def psnr(a, b):
    d = (a.float() - b.float()) / 255
    return float(-10 * torch.log10(d.square().mean()))


def main():
    speech = str(DEFAULT_TALKER_PATH.parent / "demo_speech.wav")
    cpu = dgtalker.load_talker(device="cpu").render(speech, width=256, height=256)
    gpu_talker = dgtalker.load_talker(device="cuda")
    assert gpu_talker.generator.synthesis.layers[0].weight.is_contiguous(memory_format=torch.channels_last)
    gpu = gpu_talker.render(speech, width=256, height=256)
    frames = gpu_talker.fast(compile=True)
    T = len(cpu.frames)
    print(f"{T} frames; CPU vs CUDA channels-last: PSNR {psnr(cpu.frames, gpu.frames):.1f} dB, "
          f"max |diff| {int((cpu.frames.int() - gpu.frames.int()).abs().max())}")
    c_exp, c_lip = gpu_talker.coefficients(torch.randn(4, 61, 80, device="cuda") - 5)
    vm, K = gpu_talker.camera(256, 256)
    vm, K = vm.cuda().expand(4, -1, -1).contiguous(), K.cuda().expand(4, -1, -1).contiguous()
    with torch.no_grad():
        plain = gpu_talker.frames(c_exp, c_lip, vm, K, 256, 256, amp=False)[0]
        comp = frames.frames(c_exp, c_lip, vm, K, 256, 256, amp=True)[0]
    d = (plain - comp).abs()
    print(f"compiled bf16 vs float32 frames: max |diff| {float(d.max()):.4f}, mean {float(d.mean()):.5f}")
    assert psnr(cpu.frames, gpu.frames) > 35 and float(d.mean()) < 0.01


if __name__ == "__main__":
    main()
