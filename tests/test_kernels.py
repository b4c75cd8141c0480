"""Triton kernels against their torch references, under the Triton interpreter.

TRITON_INTERPRET must be set before triton's decorators run, so each check runs in its own Python process;
this keeps the setting out of the pytest process and the other test files."""
import json, os, subprocess, sys, textwrap

import pytest
import torch

from seqlab.archs import ngram_match
from seqlab.ssd import ssd_chunked
from seqlab.kernels import HAVE_TRITON, chunk_state_pass, chunk_state_pass_reference, ngram_average

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (the optional 'kernels' extra)")


def run_interpreted(body: str) -> dict:
    "Run `body` with TRITON_INTERPRET=1 in a fresh process; it must print one JSON line."
    code = "import os\nos.environ['TRITON_INTERPRET'] = '1'\nimport json, torch\n" + textwrap.dedent(body)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@needs_triton
def test_chunk_state_kernel_matches_reference_interpreted():
    out = run_interpreted("""
        from seqlab.kernels import chunk_state_pass_reference as ref, chunk_state_pass_triton as kern, chunk_state_pass, use_kernel
        g = torch.Generator().manual_seed(0)
        errs = []
        # ragged lengths (not multiples of the chunk), fp16 inputs, a barely-decaying head, with and without h0
        for T, cs, P, N, dt, h0 in [(37, 16, 3, 5, torch.float32, True), (64, 32, 16, 16, torch.float32, False),
                                    (50, 16, 4, 8, torch.float16, True), (17, 16, 8, 4, torch.float32, False)]:
            X = torch.randn(2, T, 3, P, generator=g).to(dt); logA = -torch.rand(2, T, 3, generator=g)
            logA[:, :, 0] = -1e-7; logA = logA.to(dt); B = torch.randn(2, T, N, generator=g).to(dt)
            init = torch.randn(2, 3, P, N, generator=g) if h0 else None
            k, r = kern(X, logA, B, cs, init, 3, True), ref(X, logA, B, cs, init, 3, True)
            for key in r:
                assert k[key].shape == r[key].shape, (key, k[key].shape, r[key].shape)
                if key == "top_channels": errs.append(int((k[key] != r[key]).sum()))
                else: errs.append(float(((k[key] - r[key]).abs() / (1 + r[key].abs())).max()))
        print(json.dumps({"errs": errs, "dispatch_uses_kernel": use_kernel(X)}))
    """)
    assert out["dispatch_uses_kernel"]
    assert max(out["errs"]) < 1e-5, out["errs"]


@needs_triton
def test_ngram_kernel_matches_reference_interpreted():
    out = run_interpreted("""
        from seqlab.kernels import ngram_average_reference as ref, ngram_average_triton as kern
        g = torch.Generator().manual_seed(1)
        errs = []
        for T, V, d, n, dt in [(45, 3, 6, 1, torch.float32), (45, 3, 6, 2, torch.float32), (70, 2, 16, 3, torch.float32),
                               (33, 4, 8, 2, torch.float16)]:
            tok = torch.randint(0, V, (2, T), generator=g); H = torch.randn(2, T, d, generator=g).to(dt)
            errs.append(float((kern(tok, H, n, block=16) - ref(tok, H, n)).abs().max()))
        print(json.dumps({"errs": errs}))
    """)
    assert max(out["errs"]) < 1e-5, out["errs"]


def test_cpu_dispatch_is_the_reference_and_matches_the_model_path():
    g = torch.Generator().manual_seed(2)
    X, logA, B = torch.randn(1, 45, 2, 4, generator=g), -torch.rand(1, 45, 2, generator=g), torch.randn(1, 45, 8, generator=g)
    r = chunk_state_pass(X, logA, B, 16, top_k=2, return_states=True)
    _, ends, h = ssd_chunked(X, logA, B, torch.zeros_like(B), 16)
    torch.testing.assert_close(r["states"], ends, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r["final_state"], h, atol=1e-5, rtol=1e-5)
    tok = torch.randint(0, 3, (2, 30), generator=g); H = torch.randn(2, 30, 5, generator=g)
    torch.testing.assert_close(ngram_average(tok, H, 2), ngram_match(tok, 2) @ H, atol=1e-5, rtol=1e-5)


def test_kernel_dispatch_bad_input():
    from seqlab.core import BadInput
    with pytest.raises(BadInput, match="Expected X"): chunk_state_pass(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 3), 16)
    with pytest.raises(BadInput, match="disagree"): ngram_average(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, 2), 1)
