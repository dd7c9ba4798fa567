"""The DeepEyes conversation as text: the first prompt, and what the loop inserts between turns.

Qwen2.5-VL's chat format (`<|im_start|>role ... <|im_end|>`), written here rather than through a
tokenizer's chat template because the loop needs the exact text of every piece it inserts (a
tool response, an error) and the same rendering for the tiny model and Qwen2.5-VL-7B. Each image
is ONE `<|image_pad|>` inside `<|vision_start|>...<|vision_end|>`: the engine's view (vLLM
expands the pad itself; see `actors.sequence`).
"""

from __future__ import annotations

from core.data import IMAGE_PLACEHOLDER
from core.types import Sample
from tools import render_tools_prompt

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ASSISTANT_OPEN = f"{IM_START}assistant\n"

# Qwen2.5's tool-use system prompt (its chat template renders declared tools this way).
SYSTEM_WITH_TOOLS = (
    "You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with "
    "the user query.\n\nYou are provided with function signatures within <tools></tools> XML "
    "tags:\n{tools}\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
)
# The DeepEyes user instruction: think, zoom if needed, answer, in that format.
INSTRUCTION = (
    "Think first, call **image_zoom_in_tool** if needed, then answer. Format strictly as:  "
    "<think>...</think>  <tool_call>...</tool_call> (if tools needed)  <answer>...</answer>"
)


# Without tools (tools.enabled=[]): the same answer format, nothing to call. For baselines such
# as Qwen2.5-VL-7B answering from the full image alone.
SYSTEM_WITHOUT_TOOLS = "You are a helpful assistant."
INSTRUCTION_WITHOUT_TOOLS = ("Think first, then answer. Format strictly as:  <think>...</think>  "
                             "<answer>...</answer>")


def render_prompt(sample: Sample, tool_names: list[str]) -> str:
    """System prompt with the tools, the sample's turns, and an open assistant turn.

    A sample without a system message gets the tool-use system prompt (a plain one when no tool is
    enabled); a user turn that does not already ask for `<answer>` (the released DeepEyes rows do)
    gets the instruction appended.
    """
    messages = [dict(m) for m in sample.messages]
    if messages[0]["role"] != "system":
        system = (SYSTEM_WITH_TOOLS.format(tools=render_tools_prompt(tool_names)) if tool_names
                  else SYSTEM_WITHOUT_TOOLS)
        messages.insert(0, {"role": "system", "content": system})
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    if "<answer>" not in messages[last_user]["content"]:
        instruction = INSTRUCTION if tool_names else INSTRUCTION_WITHOUT_TOOLS
        messages[last_user]["content"] = messages[last_user]["content"].rstrip() + "\n" + instruction
    turns = [f"{IM_START}{m['role']}\n{m['content'].replace(IMAGE_PLACEHOLDER, IMAGE)}{IM_END}\n"
             for m in messages]
    return "".join(turns) + ASSISTANT_OPEN


def tool_response(with_image: bool, error: str = "") -> str:
    """The user turn that answers a tool call, then the next assistant turn opened.

    Success shows the new image between `<tool_response>` tags with the instruction repeated;
    failure starts with 'Error:' and the reason, so the model can correct its call.
    """
    if error:
        body = f"Error: {error}"
    else:
        body = f"<tool_response>{IMAGE if with_image else ''}{INSTRUCTION}</tool_response>"
    return f"{IM_START}user\n{body}{IM_END}\n{ASSISTANT_OPEN}"
