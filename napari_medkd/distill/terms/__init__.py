"""Distillation terms; importing this package registers every term in ``registry.TERMS``."""
from . import attention, cwd, discriminator, emkd, ifvd, logit_kd, mskd, skd  # noqa: F401
from . import gkd_dcgd, gkd_dicd, gkd_msan, graph_flow, paraphraser  # noqa: F401
