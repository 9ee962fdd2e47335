"""``smooth_coefficients``, the runtime's EMA of c, against the formula written out in plain Python."""

from __future__ import annotations

import pytest
import torch

from adsrt.runtime.backends import smooth_coefficients


def test_without_a_state_c_is_p_without_the_clean_class():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    assert torch.equal(smooth_coefficients(probs, None, 0.9), probs[:, :2])


@pytest.mark.parametrize("ema", [0.0, 0.3, 0.8])
def test_ema_first_frame_blend_restart_and_in_place_state(ema):
    frames = [[0.7, 0.1, 0.2], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]]
    restart_at = 3  # a scene cut: the caller zeroes the state
    state = torch.zeros(3)
    expected, prev = [], None
    for i, p in enumerate(frames):
        if i == restart_at:
            state.zero_()
            prev = None
        if prev is None:  # first frame (state[k] == 0): p as it is
            c = p[:2]
        else:
            c = [ema * prev[j] + (1 - ema) * p[j] for j in range(2)]
        expected.append(c)
        prev = c

        out = smooth_coefficients(torch.tensor([p]), state, ema)
        assert out.shape == (1, 2) and out.dtype == torch.float32
        torch.testing.assert_close(out[0], torch.tensor(c), atol=1e-6, rtol=0)
        torch.testing.assert_close(state, torch.tensor([*c, 1.0]), atol=1e-6, rtol=0)  # updated in place
    assert len(expected) == len(frames)
