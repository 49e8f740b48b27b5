"""Pictures of explanations: image heatmaps (PNG) and token highlighting (HTML)."""

from .heatmap import heatmap_image, image_layout, save_png, spatial_map
from .tokens import save_token_html, token_html, token_scores_json

__all__ = ["heatmap_image", "image_layout", "save_png", "save_token_html", "spatial_map",
           "token_html", "token_scores_json"]
