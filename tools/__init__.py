"""Tools and the helpers they share with the tests, importable as one package from the pack's folder:

* ``hostfind``: which ComfyUI the tests and tools run against, and its Python;
* ``comfy_server`` (with ``websocket_lite``): a real ComfyUI server with this pack loaded, driven over HTTP;
* ``workflow_api``: the example workflows (UI format) as API prompts, checked against a server's nodes;
* ``make_tiny_weights``: tiny random stand-in models in the released file layouts;
* ``selfcheck``, ``build_workflows``: the commands (``python -m tools.selfcheck``, ``python -m tools.build_workflows``).

Nothing here is part of the node pack ComfyUI loads.
"""
