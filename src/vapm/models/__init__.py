"""The registered models' trainer modules (see models.yaml and vapm.registry) and what they share.

Each trainer module (`vision_scratch`, `vision_transfer`, `acoustic_svm`, `acoustic_cnn`, ...) defines
`Params` (its params section) and `train(job) -> Trained`; `common` holds the Keras image-input pieces.
Heavy libraries are imported inside functions, so validating params does not load TensorFlow.
"""
