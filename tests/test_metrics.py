import math

import numpy as np
import pytest

from motioncache_vllm.metrics import psnr_db, ssim


def test_psnr_is_over_whole_video_mse():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] = 10  # MSE = 100 / 2 over the video; a mean of per-frame PSNRs would be infinite
    assert psnr_db(b, a) == pytest.approx(10 * math.log10(255**2 / 50))
    assert psnr_db(a, a) == math.inf


def test_ssim_identical_is_one_and_noise_lowers_it():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 32)
    a = np.broadcast_to((ramp[:, None] + ramp[None, :])[None, :, :, None] / 2, (3, 32, 32, 3)).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    assert ssim(noisy, a) < 0.95


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        psnr_db(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((2, 4, 4, 3), np.uint8))
