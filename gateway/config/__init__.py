"""The config file: YAML with line numbers -> secrets substituted -> pydantic models.

Every problem is reported at once, each as a `Problem` with the file, line and column of
the offending key or value, so `parkgate check` can print `FILE:LINE:COL: path: message`.

The parts: `sections` (the pydantic models), `checks` (broker URLs, topic templates, ids),
`problems` (placing and listing what is wrong) and `load` (file -> `LoadedConfig`).
"""

from gateway.config.checks import (
    NAME_MAX,
    TOPIC_MAX_BYTES,
    broker_url_problem,
    publish_topic_problem,
    sparkplug_id_problem,
)
from gateway.config.load import (
    MAX_CONFIG_BYTES,
    LoadedConfig,
    json_schema,
    load_config,
    parse_config,
    read_config_text,
    read_document,
)
from gateway.config.problems import (
    MAX_PROBLEMS,
    ConfigProblems,
    Problem,
    Reporter,
    printable,
    yaml_problem,
)
from gateway.config.sections import (
    DIALECTS,
    AgentSection,
    BatchSection,
    BufferSection,
    Config,
    GatewaySection,
    LoggingSection,
    MetricsSection,
    MqttSection,
    SparkplugSection,
    TlsSection,
    UplinkSection,
)

__all__ = [
    "DIALECTS",
    "MAX_CONFIG_BYTES",
    "MAX_PROBLEMS",
    "NAME_MAX",
    "TOPIC_MAX_BYTES",
    "AgentSection",
    "BatchSection",
    "BufferSection",
    "Config",
    "ConfigProblems",
    "GatewaySection",
    "LoadedConfig",
    "LoggingSection",
    "MetricsSection",
    "MqttSection",
    "Problem",
    "Reporter",
    "SparkplugSection",
    "TlsSection",
    "UplinkSection",
    "broker_url_problem",
    "json_schema",
    "load_config",
    "parse_config",
    "printable",
    "publish_topic_problem",
    "read_config_text",
    "read_document",
    "sparkplug_id_problem",
    "yaml_problem",
]
