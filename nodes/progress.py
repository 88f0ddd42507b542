"""Per-step reporting for the pack sampler: interruption, progress bar and latent previews.

:class:`StepReporter` is the ``callback(step_index, latent_tokens)`` that :func:`ideogram4.sampler.sample` calls
after every step; :meth:`StepReporter.check_interrupted` is also called before each model evaluation, so a Cancel
in the UI stops sampling within one step.
"""

from __future__ import annotations

import comfy.model_management
import comfy.utils
import latent_preview
import torch

from ..ideogram4.latent import tokens_to_comfy_latent


def check_interrupted_between_blocks(block_index: int) -> None:
    """The DiT's ``block_callback``: a Cancel stops a forward within one transformer block, not one forward (a
    forward of a large image takes many seconds)."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class StepReporter:
    """Reports ``total_steps`` sampling steps of a ``grid_h x grid_w`` token latent to the ComfyUI UI."""

    def __init__(self, total_steps: int, grid_h: int, grid_w: int, latent_format=None, preview_device=None,
                 times: list[float] | None = None, start_tokens: torch.Tensor | None = None):
        self.total_steps = total_steps
        self.grid_h, self.grid_w = grid_h, grid_w
        # With the step times and the start latent, previews show the clean-image estimate (below) instead of
        # the still noisy latent of the early steps.
        self.times = times
        self.previous_tokens = start_tokens
        self.progress_bar = comfy.utils.ProgressBar(total_steps)
        self.previewer = None
        if latent_format is not None and preview_device is not None:
            # Latent2RGB previews come from the latent format's RGB factors (FLUX.2 on hosts that have it);
            # None when previews are off (--preview-method none) or the format has no factors.
            self.previewer = latent_preview.get_previewer(preview_device, latent_format)

    @staticmethod
    def check_interrupted() -> None:
        """Raise ComfyUI's interruption exception if the user pressed Cancel."""
        comfy.model_management.throw_exception_if_processing_interrupted()

    def __call__(self, step_index: int, tokens: torch.Tensor) -> None:
        self.check_interrupted()
        preview = None
        if self.previewer is not None:
            latent = tokens_to_comfy_latent(self.preview_tokens(step_index, tokens), self.grid_h, self.grid_w)
            preview = self.previewer.decode_latent_to_preview_image("JPEG", latent)
        self.progress_bar.update_absolute(step_index + 1, self.total_steps, preview)

    def preview_tokens(self, step_index: int, tokens: torch.Tensor) -> torch.Tensor:
        """The clean-image estimate after a step, ``x0 = z_s + (1 - s) v``, with the step's guided velocity
        recovered exactly from the Euler update ``z_s = z_t + v (s - t)``; the latent itself when the times or
        the start latent are unknown. For previews only: the sampler's state is not touched."""
        if self.times is None or self.previous_tokens is None:
            return tokens
        t, s = self.times[step_index], self.times[step_index + 1]
        velocity = (tokens - self.previous_tokens) / (s - t)
        self.previous_tokens = tokens.clone()
        return tokens + (1.0 - s) * velocity
