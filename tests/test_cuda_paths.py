"""CUDA-only behaviour that the CPU suite cannot show; run on a GPU by ``lmfix bench gpu`` (its tests step,
``-k cuda``) and skipped elsewhere. Every test name contains ``cuda`` so that step selects it."""

from __future__ import annotations

import pytest
import torch

from lmfix.model.config import ModelConfig
from lmfix.model.heads import LearnedHead
from lmfix.model.language_model import LanguageModel
from lmfix.training.trainer import train
from tests.test_train import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_cuda_bf16_recurrent_body_runs_in_float32_not_float16(model: str):
    """Autocast would run cuDNN's RNN in float16 (not bf16) without loss scaling; lmfix keeps it float32."""
    config = ModelConfig(model=model, emsize=32, nhid=48, nlayers=2)
    lm = LanguageModel(LearnedHead(50, 32), config).cuda()
    lm.set_precision(torch.bfloat16)
    seen = []
    for layer in lm.body.layers:
        layer.rnn.register_forward_hook(lambda _m, args, out: seen.append((args[0].dtype, out[0].dtype)))
    ids = torch.randint(50, (7, 3), device="cuda")
    loss, _ = lm(ids, ids, lm.init_state(3))
    loss.backward()
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in lm.parameters())


def test_cuda_nt_asgd_keeps_its_step_count_on_the_gpu(tiny_corpus_dir, tmp_path):
    """ASGD reads a CPU-side step count back per parameter per step unless it is capturable."""
    config = tiny_config(tiny_corpus_dir, optimizer="asgd", lr=30.0, nonmono=1, eval_interval=5, epochs=2,
                         device="cuda")
    train(config, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["optimizer_kind"] == "averaged"
    assert all(group["capturable"] for group in state["optimizer"]["param_groups"])
