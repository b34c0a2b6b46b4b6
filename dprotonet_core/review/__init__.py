"""The review app's facade: everything the Streamlit pages do, as plain functions and small classes.

The pages under `pages/` only lay widgets out and call this package; nothing here imports Streamlit, so every
step (reading an upload, predicting, explaining, rendering the panes, the report) is testable without a
browser, and thread-safe: models are in eval mode and frozen, prediction runs under `torch.inference_mode`,
and no function keeps state between calls. Per-user state (the explanation cache) is an object the caller
owns and keeps in its own session.

Nothing about an upload is written to disk or logged here: bytes are read in memory, only their sha256 is
kept as a cache key, and the report carries no DICOM header field.

Modules, each with one reader: settings, catalogue, case, explanation, render, report, gallery, evaluation,
card, queue, text. `from dprotonet_core import review; review.X` reaches every public name.
"""

from __future__ import annotations

from dprotonet_core import ood  # noqa: F401 - the review page reads ood.WARNING
from dprotonet_core.explain.mdm import card_default_profile  # noqa: F401 - the page starts at each model's default
from dprotonet_core.review.card import (  # noqa: F401
    CARD_SECTIONS,
    CROSS_VALIDATED_ROWS,
    PERFORMANCE_CAPTION,
    card_integrity,
    card_label,
    card_sections,
    card_value_markdown,
    cross_validation_rows,
    performance_caption,
    performance_rows,
    prototype_provenance,
)
from dprotonet_core.review.case import (  # noqa: F401
    MAX_CACHED_CASES,
    Case,
    Routing,
    Sample,
    apply_window,
    cached_case,
    decision_text,
    default_model_input,
    default_prototype,
    display_boxes,
    display_pixels,
    file_hash,
    image_key,
    is_windowable,
    list_samples,
    metadata_rows,
    model_input,
    ood_warning,
    predict,
    prediction_headline,
    probability,
    probability_text,
    prototype_choices,
    prototype_label,
    read_upload,
    route,
    samples_dir,
    samples_for,
    source_id,
    summarise_rows,
    window_presets,
)
from dprotonet_core.review.catalogue import (  # noqa: F401
    CheckpointEntry,
    checkpoint_id,
    checkpoint_summary,
    data_credit,
    list_checkpoints,
    load_model,
    models_dir,
)
from dprotonet_core.review.dicom_export import (  # noqa: F401
    dicom_export_label,
    dicom_export_zip,
    export_request,
)
from dprotonet_core.review.evaluation import (  # noqa: F401
    TRAINING_IMAGES_WARNING,
    EvaluationView,
    classification_by_folder,
    classification_by_view,
    classification_headline,
    classification_metrics,
    format_timestamp,
    load_evaluation,
    on_training_images,
    table5_caption,
)
from dprotonet_core.review.explanation import (  # noqa: F401
    CacheKey,
    Explanation,
    ExplanationCache,
    ProgressCallback,
    explain,
    explain_cached,
    explanation_key,
    profile_choice_label,
    prototype_stack,
    stored_explanation,
    stored_explanations_dir,
)
from dprotonet_core.review.gallery import (  # noqa: F401
    PrototypeCard,
    prototype_card,
    prototype_cards,
    stored_prototype_method,
    weights_figure,
)
from dprotonet_core.review.reliability import (  # noqa: F401
    RELIABILITY_CAPTION,
    card_reliability,
    evaluation_reliability,
    reliability_figure,
)
from dprotonet_core.review.render import (  # noqa: F401
    VIEWS,
    DisplaySettings,
    Pane,
    RefiningView,
    RenderedCase,
    View,
    colorscale,
    default_settings,
    panes_figure,
    png_bytes,
    prototype_title,
    render_case,
    render_pane,
    render_refining,
    settings_from,
)
from dprotonet_core.review.report import (  # noqa: F401
    ReportInputs,
    report_dict,
    report_inputs,
    report_json,
    report_png,
)
from dprotonet_core.review.settings import (  # noqa: F401
    ASSETS,
    BUNDLED_CHECKPOINTS,
    BUNDLED_ENV,
    COLORMAPS,
    DEFAULT_MODELS_DIR,
    DEFAULT_SAMPLES_DIR,
    DEFAULT_TOP_K,
    DEMO_ENV,
    DISCLAIMER,
    DISPLAY_SIZE,
    EMPTY_STACK,
    LOG,
    LOG_LEVEL_ENV,
    MAX_CACHED_EXPLANATIONS,
    MAX_PIXELS,
    MAX_UPLOAD_MB,
    MAX_WAITING_EXPLANATIONS,
    MDM_PROFILE_HELP,
    MDM_PROFILES,
    MDM_TIME_LIMIT_S,
    MODELS_DIR_ENV,
    PROFILE_SHORT_NAMES,
    REPO,
    SAMPLES_DIR_ENV,
    SYNTHETIC_WARNING,
    TORCH_THREADS_ENV,
    ReviewError,
    configure_logging,
    configure_torch,
    demo_mode,
    mdm_time_limit_s,
    offered_profiles,
)
from dprotonet_core.review.text import plain, unescaped  # noqa: F401
from dprotonet_core.task_fit import task_fit  # noqa: F401
