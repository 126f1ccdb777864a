"""The registered models (models.yaml) and what they share.

Each trainer module (`vision_scratch`, `vision_transfer`, `acoustic_svm`, `acoustic_cnn`, `acoustic_anomaly`)
defines `Params` (its params section) and `train(job) -> Trained`. `components` holds what trainers share: the
job contract (`job`), their data and split (`data`), the Keras fit loop (`keras_fit`) and the image input
(`layers`). Heavy libraries are imported inside functions, so validating params does not load TensorFlow.

May import: vapm.core, vapm.config, vapm.data.
"""
