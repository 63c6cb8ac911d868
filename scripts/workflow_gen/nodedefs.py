"""Node definitions as the ComfyUI frontend reads them from ``/object_info``.

The frontend (comfyui-frontend-package 1.32) builds a node's widgets from its inputs in
``input_order`` (required, then optional; hidden inputs never): every INT, FLOAT, STRING, BOOLEAN
or COMBO input without ``forceInput`` is a widget, every other input a socket only. An INT input
with ``control_after_generate`` (or, when that flag is absent, named ``seed``/``noise_seed``)
gets a second widget right after it whose value ("fixed", "randomize", ...) is saved in
``widgets_values`` but never sent to the server. Combo inputs come in two shapes: V1
``[[option, ...], {...}]`` and V3 ``["COMBO", {"options": [...]}]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scripts.workflow_gen.graph import Value, WorkflowError

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
"""Input types the frontend shows as widgets (all others are link-only sockets)."""
LEGACY_SEED_NAMES = ("seed", "noise_seed")
"""INT inputs with these names get a control widget unless they say otherwise."""
CONTROL_VALUE = "fixed"
"""Value of the control-after-generate widget in shipped workflows: rerunning repeats the seed."""
VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "INT": (int,),
    "FLOAT": (int, float),
    "STRING": (str,),
    "BOOLEAN": (bool,),
}
"""Python types of the values of each non-combo widget type."""
SECTIONS = ("required", "optional")
"""Input sections of /object_info that the frontend turns into sockets or widgets, in order."""

CORE_PACK_ID = "comfy-core"
"""Registry id the frontend gives ComfyUI's own nodes."""
PACK_ID = "comfyui-srpo"
"""This pack's registry id (pyproject.toml [project] name)."""
PACK_NODE_PREFIX = "SRPO"
CORE_MODULE = "nodes"
CORE_MODULE_PREFIXES = ("comfy_extras.", "comfy_api_nodes.")
"""``python_module`` (/object_info) of ComfyUI's own nodes: ``nodes`` or these packages."""
CUSTOM_MODULE_PREFIX = "custom_nodes."

MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
"""ComfyUI's ``folder_paths.supported_pt_extensions``: what a model file name ends with."""
MODEL_FOLDER_INPUTS: dict[tuple[str, str], str] = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("SRPOLoadWeights", "srpo_checkpoint"): "diffusion_models",
    ("SRPOLoadRewardModel", "checkpoint"): "srpo_rewards",
}
"""(node type, input) -> ComfyUI model folder, for combos that list the files of a model folder.

Their options depend on what a server has installed, so shipped workflows may name files a test
server lacks; every other combo value must be one of the options.
"""


def is_model_file_name(value: object) -> bool:
    """True for a string that names a model file (ends with a model extension)."""
    return isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS)


@dataclass(frozen=True)
class InputDef:
    """One input of a node: name, type ("INT", "COMBO", "MODEL", ...), options, combo choices."""

    name: str
    type: str
    optional: bool
    options: Mapping[str, Any]
    choices: tuple[Any, ...] = ()

    @property
    def is_widget(self) -> bool:
        """Whether the frontend shows this input as a widget (with a value in the graph)."""
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control(self) -> bool:
        """Whether the frontend adds a control-after-generate widget right after this one."""
        flag = self.options.get("control_after_generate")
        if flag is None:
            flag = self.name in LEGACY_SEED_NAMES
        return self.type == "INT" and bool(flag)

    def default(self) -> Value:
        """The value a freshly created widget holds (the frontend's rule for each type)."""
        if "default" in self.options:
            return self.options["default"]
        if self.type in ("INT", "FLOAT"):
            return self.options.get("min", 0)
        if self.type == "BOOLEAN":
            return False
        if self.type == "COMBO" and self.choices:
            return self.choices[0]
        if self.type == "STRING":
            return ""
        raise WorkflowError(f"input {self.name!r} ({self.type}) has no default: give a value")


@dataclass(frozen=True)
class OutputDef:
    """One output of a node: the name the frontend shows and its type."""

    name: str
    type: str


@dataclass(frozen=True)
class NodeDef:
    """A node type: its inputs in the frontend's order and its outputs."""

    class_type: str
    display_name: str
    inputs: tuple[InputDef, ...]
    outputs: tuple[OutputDef, ...]
    python_module: str = ""

    @property
    def pack_id(self) -> str | None:
        """Registry id of the node's pack (the frontend's ``cnr_id``), None when unknown.

        Saved with the node, it spares the frontend a registry lookup for the node's pack.
        """
        if self.python_module == CORE_MODULE or self.python_module.startswith(CORE_MODULE_PREFIXES):
            return CORE_PACK_ID
        from_custom = self.python_module.startswith(CUSTOM_MODULE_PREFIX)
        if from_custom and self.class_type.startswith(PACK_NODE_PREFIX):
            return PACK_ID
        return None

    @property
    def sockets(self) -> tuple[InputDef, ...]:
        """Link-only inputs, in order (the first input slots of a frontend node)."""
        return tuple(i for i in self.inputs if not i.is_widget)

    @property
    def widgets(self) -> tuple[InputDef, ...]:
        """Widget inputs, in order (their values make up ``widgets_values``)."""
        return tuple(i for i in self.inputs if i.is_widget)

    def input(self, name: str) -> InputDef:
        """The input called ``name``; raises WorkflowError naming the valid ones."""
        for candidate in self.inputs:
            if candidate.name == name:
                return candidate
        known = ", ".join(i.name for i in self.inputs)
        raise WorkflowError(f"{self.class_type} has no input {name!r}; it has: {known}")

    def output_index(self, output: int | str) -> int:
        """Index of an output given by index or by name; raises WorkflowError if unknown."""
        names = [o.name for o in self.outputs]
        if isinstance(output, int) and 0 <= output < len(names):
            return output
        if isinstance(output, str) and output in names:
            return names.index(output)
        raise WorkflowError(f"{self.class_type} has no output {output!r}; it has: {names}")


def parse_input(name: str, spec: list[Any], optional: bool) -> InputDef:
    """An InputDef from one /object_info input entry (V1 list combos and V3 COMBO alike)."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, list):
        return InputDef(name, "COMBO", optional, options, tuple(kind))
    choices = tuple(options.get("options", ())) if kind == "COMBO" else ()
    return InputDef(name, str(kind), optional, options, choices)


def parse_node_def(class_type: str, info: Mapping[str, Any]) -> NodeDef:
    """A NodeDef from the /object_info entry of ``class_type``."""
    sections = info.get("input", {})
    order = info.get("input_order") or {s: list(sections.get(s, {})) for s in SECTIONS}
    inputs = [
        parse_input(name, sections[section][name], section == "optional")
        for section in SECTIONS
        for name in order.get(section, [])
    ]
    names = info.get("output_name") or info.get("output") or []
    outputs = tuple(OutputDef(str(n), str(t)) for n, t in zip(names, info["output"], strict=True))
    display_name = str(info.get("display_name") or class_type)
    module = str(info.get("python_module", ""))
    return NodeDef(class_type, display_name, tuple(inputs), outputs, module)


def parse_object_info(object_info: Mapping[str, Any]) -> dict[str, NodeDef]:
    """Every node type of a server's /object_info."""
    return {name: parse_node_def(name, info) for name, info in object_info.items()}


def is_of_type(value: object, kind: str) -> bool:
    """Whether ``value`` is a value of widget type ``kind`` (a bool is no number here)."""
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    return not isinstance(value, bool) and isinstance(value, VALUE_TYPES[kind])


def check_value(node: NodeDef, spec: InputDef, value: object) -> None:
    """Raise WorkflowError unless ``value`` is a valid value of widget input ``spec``.

    Combos: one of the options, or a model file name where MODEL_FOLDER_INPUTS lists the input.
    Numbers: of the input's type and within [min, max]. Strings and booleans: of that type.
    """
    where = f"{node.class_type}.{spec.name}"
    if spec.type == "COMBO":
        model_folder = (node.class_type, spec.name) in MODEL_FOLDER_INPUTS
        if value in spec.choices or (model_folder and is_model_file_name(value)):
            return
        raise WorkflowError(f"{where}: {value!r} is not one of {list(spec.choices)}")
    if not is_of_type(value, spec.type):
        raise WorkflowError(f"{where}: {value!r} is not a {spec.type} value")
    low = spec.options.get("min", -math.inf)
    high = spec.options.get("max", math.inf)
    if isinstance(value, int | float) and not low <= value <= high:
        raise WorkflowError(f"{where}: {value!r} is outside [{low}, {high}]")
