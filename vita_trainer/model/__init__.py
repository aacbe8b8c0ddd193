from .configuration import VitaConfig
from vita_api.module_groups import MODULE_GROUPS
from .modeling import VitaForCausalLM

__all__ = ["VitaConfig", "VitaForCausalLM", "MODULE_GROUPS"]
