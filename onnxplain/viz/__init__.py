"""Pictures of explanations: image heatmaps (PNG), overlays, token highlighting (HTML),
attention matrices, and the `onnxplain report` page comparing methods."""

from .attention import attention_matrix
from .heatmap import heatmap_image, save_png, spatial_map
from .overlay import heatmap_parts, input_image, overlay
from .report import build_report, default_methods, load_labels
from .report_files import report_json, write_report
from .report_html import report_html
from .report_pictures import render_pictures
from .tokens import save_token_html, token_html, token_scores_json, token_spans

__all__ = ["attention_matrix", "build_report", "default_methods", "heatmap_image",
           "heatmap_parts", "input_image", "load_labels", "overlay",
           "render_pictures", "report_html", "report_json", "save_png", "save_token_html",
           "spatial_map", "token_html", "token_scores_json", "token_spans", "write_report"]
