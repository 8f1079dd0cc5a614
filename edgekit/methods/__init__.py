"""Method plug-ins (training side; torch). Each method lives in ``methods/<name>/`` with
``model.py``, ``loss.py``, ``scoring.py``, ``components.py`` and registers a plug-in class:

    @METHODS.register("rd", family="distillation")
    class RdMethod(MethodPlugin):
        Config = RdConfig            # StrictModel with ``type: Literal["rd"]``
        def build(self, recipe, cfg, backbone) -> AnomalyModel: ...

See ``edgekit.methods.base`` for the AnomalyModel contract."""

from edgekit.registry import Registry

METHODS: Registry = Registry(
    "method",
    modules=(
        "edgekit.methods.rd.model",
        "edgekit.methods.rrd.model",
        "edgekit.methods.mrkd.model",
        "edgekit.methods.cse.model",
    ),
)
