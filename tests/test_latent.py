import numpy as np
import torch

from motioncache_vllm.data.procedural import ClipGenerator
from motioncache_vllm.metrics import psnr_db


def test_shipped_latent_round_trip(embedded_pipe):
    vae = embedded_pipe.vae
    clips = np.stack([ClipGenerator(seed=99).clip(i).frames for i in range(6)])  # clips never fitted on
    video = torch.from_numpy(clips).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
    z = vae.encode(video).latents
    assert z.shape == (6, vae.config.z_dim, 9, 16, 16)  # 33 frames -> 9 latent frames
    back = vae.decode(z).sample
    assert back.shape == video.shape
    rec = ((back.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert psnr_db(rec, clips) >= 30.0
