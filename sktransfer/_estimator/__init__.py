"""The shared estimator skeleton: fit/predict, parameters, cached outputs, embedders."""
