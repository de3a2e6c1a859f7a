"""Read a workflow's outputs (``outputs.pb``, written by the Flyte stand-in) back in the notebook: ``result``."""

from flyteidl.core import literals_pb2
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.core.utils import load_proto_from_file
from flytekit.models.literals import LiteralMap

outputs = LiteralMap.from_flyte_idl(load_proto_from_file(literals_pb2.LiteralMap, "outputs.pb"))
result = TypeEngine.literal_map_to_kwargs(FlyteContextManager.current_context(), outputs, {"o0": str})["o0"]
