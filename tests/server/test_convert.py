"""Generate requests from protobuf: convert.py maps the fields and the engine's request
types validate them, with the API's messages (the proto field path first, then the value
and the limit; the HTTP layer reads ``param`` from that path). In process, no Ray."""

from __future__ import annotations

import math

import pytest

from saeserve.errors import InvalidArgument
from saeserve.server.convert import generate_from_proto
from saeserve.server.settings import Limits
from saeserve.v1 import saeserve_pb2 as pb

LIMITS = Limits(max_new_tokens=512, max_interventions=2, max_stop_strings=2)
ADD = pb.INTERVENTION_MODE_ADD


def _gen(**fields: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt="Once", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_gen(sampling=pb.SamplingParams(max_new_tokens=600)), "generate.sampling.max_new_tokens: 600 > limit 512"),
        (_gen(sampling=pb.SamplingParams(stop=["a", "b", "c"])), "generate.sampling.stop (count): 3 > limit 2"),
        (_gen(sampling=pb.SamplingParams(stop=[""])), "generate.sampling.stop[0]: must not be empty"),
        (_gen(sampling=pb.SamplingParams(temperature=-1)), "generate.sampling.temperature: -1.0 must be in [0, 100]"),
        (_gen(sampling=pb.SamplingParams(top_p=0)), "generate.sampling.top_p: 0.0 must be in (0, 1]"),
        (_gen(sampling=pb.SamplingParams(seed=2**63)), "generate.sampling.seed: 9223372036854775808 must be in [0, 2^63)"),
        (_gen(top_logprobs=3), "generate.top_logprobs: needs logprobs to be true"),
        (_gen(logprobs=True, top_logprobs=30), "generate.top_logprobs: 30 > limit 20"),
        (_gen(interventions=[pb.Intervention(mode=ADD, sae="s", feature=1)] * 3), "generate.interventions (count): 3 > limit 2"),
        (_gen(interventions=[pb.Intervention(sae="s", feature=1)]), "generate.interventions[0].mode: required"),
        (_gen(interventions=[pb.Intervention(mode=ADD, value=math.inf)]), "generate.interventions[0].value: must be finite"),
        (_gen(interventions=[pb.Intervention(mode=ADD, value=-2000)]), "generate.interventions[0].value (absolute): 2000.0 > limit 1000.0"),
        (_gen(interventions=[pb.Intervention(mode=ADD, positions=pb.POSITIONS_INDICES)]), "generate.interventions[0].indices: positions INDICES needs at least one index"),
        (_gen(interventions=[pb.Intervention(mode=ADD, indices=[1])]), "generate.interventions[0].indices: only allowed with positions INDICES"),
        (pb.GenerateRequest(), "generate: exactly one of prompt and messages"),
    ],
)  # fmt: skip
def test_bad_fields_name_their_proto_path_and_limit(
    request_: pb.GenerateRequest, message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        generate_from_proto(request_, LIMITS)
    assert str(info.value).startswith(message)


def test_defaults_and_fields_map_to_the_engine_request() -> None:
    iv = pb.Intervention(mode=ADD, sae="s", feature=3, value=2.0, positions=pb.POSITIONS_PROMPT)
    spec = generate_from_proto(_gen(interventions=[iv], logprobs=True, top_logprobs=2), LIMITS)
    req = spec.request([5, 6])
    assert req.prompt_ids == [5, 6] and req.top_logprobs == 2
    assert req.sampling.max_new_tokens == 64 and req.sampling.temperature == 1.0
    assert req.sampling.seed is None
    assert [(i.sae_id, i.feature, i.value, str(i.positions)) for i in req.interventions] == [
        ("s", 3, 2.0, "prompt")
    ]
