"""psft: Proximal Supervised Fine-Tuning on the Hugging Face stack."""

from psft.config import PSFTConfig
from psft.losses import LOSSES, LossOutput, get_loss, register_loss, token_mean
from psft.trainer import PSFTTrainer

__version__ = "0.1.0"
__all__ = ["LOSSES", "LossOutput", "PSFTConfig", "PSFTTrainer", "get_loss", "register_loss", "token_mean"]
