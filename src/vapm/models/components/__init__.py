"""What every trainer shares: the job a trainer gets and what it returns (`job`), its features and their
fit/validation/test split (`data`), compiling, fitting and predicting for Keras classifiers (`keras_fit`), and
the grey image input with its augmentation (`layers`)."""
