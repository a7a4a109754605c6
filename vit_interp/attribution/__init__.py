"""Attribution: which SAE latents drive a head gate (latent → head), and what heads do for classes (head → class).

* `latent_head_attribution` / `latent_head_attributions`: latent → head matrices of a gated layer by
  gradient × activation on the gate's logits, by latent ablation (Δ keep probability or decision) and
  by correlation, from one harvest of the SAE hook; `latent_ablation_effect` re-runs the spliced,
  gated model for a cross-check; `method_agreement` compares methods by rank correlation.
* `head_class_dla`: per (head, class) direct logit attribution with TransformerLens' ``ActivationCache``
  (``stack_head_results``, ``logit_attrs``), gated or not.
* `latent_head_heatmap`, `head_class_heatmap`: figures.
"""

from vit_interp.attribution.agreement import MethodAgreement, method_agreement, spearman
from vit_interp.attribution.figures import head_class_heatmap, latent_head_heatmap, latent_row_labels
from vit_interp.attribution.head_class import HeadClassDLA, component_logit_attrs, head_class_dla
from vit_interp.attribution.latent_head import (
    DEFAULT_TARGETS,
    METHODS,
    TARGETS,
    LatentHeadAttribution,
    decoder_directions,
    latent_ablation_effect,
    latent_head_attribution,
    latent_head_attributions,
)

__all__ = [
    "DEFAULT_TARGETS",
    "METHODS",
    "TARGETS",
    "HeadClassDLA",
    "LatentHeadAttribution",
    "MethodAgreement",
    "component_logit_attrs",
    "decoder_directions",
    "head_class_dla",
    "head_class_heatmap",
    "latent_ablation_effect",
    "latent_head_attribution",
    "latent_head_attributions",
    "latent_head_heatmap",
    "latent_row_labels",
    "method_agreement",
    "spearman",
]
