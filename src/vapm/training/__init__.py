"""The train stage for any registered model (`run`: load its features, train, save models/<name>/ whole, log
one MLflow run, register and promote) and k-fold cross-validation of the classifiers (`crossval`).

May import: every layer below it: vapm.core, config, data, models, artefacts, evaluation, serving, tracking.
"""
