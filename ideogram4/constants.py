"""Fixed values of the Ideogram 4 sequence layout, shared by the DiT, the packing code and the text encoder.

Values are those of the official ``ideogram4/constants.py`` (spec A.2).
"""

# Segment id of padding tokens. Real text and image tokens of a sample share segment 1; a token attends to
# another iff their segment ids are equal, so padding only ever sees padding.
SEQUENCE_PADDING_INDICATOR = -1

# Per-token role ("indicator"). Padding rows carry 0: neither text nor image.
OUTPUT_IMAGE_INDICATOR = 2
LLM_TOKEN_INDICATOR = 3

# Added to all three (t, h, w) position axes of image tokens so they never collide with text positions
# (text positions count 0, 1, 2, ... from the first real token).
IMAGE_POSITION_OFFSET = 65536

# Qwen3-VL decoder layers whose hidden states are interleaved into the 13 x 4096 = 53248-wide text feature.
QWEN3_VL_ACTIVATION_LAYERS = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 35)

# A latent token is a 2 x 2 patch of the 32-channel VAE latent: 128 channels.
PATCH_SIZE = 2
VAE_LATENT_CHANNELS = 32
TOKEN_CHANNELS = PATCH_SIZE * PATCH_SIZE * VAE_LATENT_CHANNELS

# VAE downsampling (8) x patch size (2): one latent token covers a 16 x 16 pixel square.
PIXELS_PER_TOKEN = 16
