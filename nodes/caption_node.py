"""Ideogram 4 Caption: the caption editor's node. Its ``state`` widget holds the editor's JSON state (see
:mod:`ideogram4.caption_studio`); the node outputs the canonical caption and the frame's size."""

from __future__ import annotations

from comfy_api.latest import io

from ..ideogram4.caption_studio import CaptionStateError, caption_of_state, default_state_text
from .settings import CATEGORY


class Caption(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefCaption",
            display_name="Ideogram 4 Caption (reference)",
            category=CATEGORY,
            description="Write an Ideogram 4 JSON caption in a form, with boxes drawn on a frame of the image's "
                        "aspect. Outputs the canonical caption for Text Encode's prompt and the frame's size.",
            inputs=[
                io.String.Input("state", multiline=True, default=default_state_text(),
                                tooltip="The editor's state as JSON: {\"width\", \"height\", \"caption\"}. Edited "
                                        "with the form on the node; saved with the workflow."),
            ],
            outputs=[
                io.String.Output("caption", tooltip="The caption as minified JSON with literal non-ASCII, the form "
                                                    "the model was trained on: connect it to Text Encode's prompt."),
                io.Int.Output("width", tooltip="Width of the frame the boxes were drawn on (to the Sampler)."),
                io.Int.Output("height", tooltip="Height of the frame the boxes were drawn on (to the Sampler)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, state: str | None = None) -> bool | str:
        if state is None:
            return True  # fed by a link: checked when the node runs
        try:
            caption_of_state(state)
        except CaptionStateError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, state: str) -> io.NodeOutput:
        caption, width, height = caption_of_state(state)
        return io.NodeOutput(caption, width, height)
