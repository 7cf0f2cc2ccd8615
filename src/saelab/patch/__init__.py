"""SAE feature edits applied during generation, batched so that every row has its own edits.

edits = parse_edits(["resid_post.7:123=0"], lm.n_layers)
res = generate_patched(lm, prompts, [edits, []], {"blocks.7.hook_resid_post": sae})
"""

from saelab.patch.apply import AT, RowEdits, patched
from saelab.patch.edits import Edit, check_edits, parse_edit, parse_edits
from saelab.patch.generate import PatchedGeneration, generate_patched

__all__ = [
    "AT",
    "Edit",
    "PatchedGeneration",
    "RowEdits",
    "check_edits",
    "generate_patched",
    "parse_edit",
    "parse_edits",
    "patched",
]
