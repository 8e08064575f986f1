"""ZeRO-Offload on a GPU: the optimizer state in host memory, stepped by DeepSpeed's CPU Adam, trains like the
fused AdamW on the device (bf16 ZeRO-1 included, which otherwise runs DeepSpeed's BF16_Optimizer)."""
import pytest
import torch

from test_train import corpus, make_config, run  # noqa: F401 (corpus: the fixture)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("stage", [1, 2])
def test_bf16_zero_offload_trains_like_the_device_optimizer(tmp_path, corpus, stage):  # noqa: F811
    common = dict(train_iters=8, precision="bfloat16", bf16={"enabled": True}, USE_SEP_ATTN_KERNEL_ACCELERATOR=True)
    plain = run(tmp_path, make_config(tmp_path, corpus, "plain.yml", zero_optimization={"stage": stage}, **common))
    off = run(tmp_path, make_config(tmp_path, corpus, "off.yml", zero_optimization={
        "stage": stage, "offload_optimizer": {"device": "cpu", "pin_memory": True}}, **common))
    assert off["offload"] and off["optimizer"] == "DeepSpeedCPUAdam" and not plain["offload"]
    assert off["losses"] == pytest.approx(plain["losses"], rel=2e-2)
    assert off["losses"][-1] < off["losses"][0] - 0.3
