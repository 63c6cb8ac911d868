"""The ComfyUI harness used by the tests, the demo, the workflow generator and the toy-world build.

- ``provision``: find or provision ComfyUI 0.3.75 and link the pack into its custom_nodes;
- ``server``: start/stop a headless ComfyUI and drive it over HTTP + websocket;
- ``inprocess``: import ComfyUI as a library and the pack as ComfyUI does.
"""
