from .configuration import VitaConfig
from .modeling import MODULE_GROUPS, VitaForCausalLM

__all__ = ["VitaConfig", "VitaForCausalLM", "MODULE_GROUPS"]
