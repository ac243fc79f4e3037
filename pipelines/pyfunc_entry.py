"""MLflow "models from code" entry: logged beside the weights instead of a pickled object.

Loading a registered metarl model runs this file (our code, from the installed package) and
reads the weights with ``torch.load(weights_only=True)``: nothing is unpickled.
"""

import mlflow

from pipelines.model import MetaPolicyModel

mlflow.models.set_model(MetaPolicyModel())
