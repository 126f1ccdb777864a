"""Features the trainers read: resized images, MFCC + log-mel images and wavelet-packet energies.

- `vapm.data.features.vision`: `resize_image`, `resize_images`, `vision_image_size`.
- `vapm.data.features.acoustic`: `AcousticSettings`, `acoustic_settings`, `mfcc_logmel_image`,
  `wavelet_packet_energies`, `wavelet_feature_names`, `acoustic_frame_count`, `clip_range_features`.
- `vapm.data.features.build`: `featurize_vision`, `featurize_acoustic` (read data/interim, write data/features),
  `workers_worth_starting`.
- `vapm.data.features.errors`: `InterimDataError` (also importable from `build`).

The submodules are not imported here, so that importing the image side does not load librosa.
"""
