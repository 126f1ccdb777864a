"""Features the trainers read: resized images, MFCC + log-mel images and wavelet-packet energies.

- `vapm.data.features.vision`: `resize_image`, `resize_images`, `vision_image_size`.
- `vapm.data.features.acoustic`: `AcousticSettings`, `acoustic_settings`, `mfcc_logmel_image`,
  `wavelet_packet_energies`, `wavelet_feature_names`, `acoustic_frame_count`, `clip_range_features`.
- `vapm.data.features.spectral`: `centred_stft`, `mel_filter_bank`, `dct_matrix`, `hann_window` (librosa's
  transforms in NumPy alone, so that predict does not import librosa, scipy or numba).
- `vapm.data.features.build`: `featurize_vision`, `featurize_acoustic` (read data/interim, write data/features),
  `workers_worth_starting`.
- `vapm.data.features.errors`: `InterimDataError` (also importable from `build`).

The submodules are not imported here, so that importing one side does not load the other's libraries, and
predict's path (`acoustic`, `records`) imports neither pandas (`build`) nor Pillow (`vision`).
"""
