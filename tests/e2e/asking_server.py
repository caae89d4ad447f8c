"""A stdio MCP server, built on the `mcp` 2.3.0 SDK, whose one tool needs the client's LLM.

`summarize` asks the client to sample before it answers. On protocol 2026-07-28 the SDK turns
that into an `input_required` result; the client samples and retries the same call with
`inputResponses` and `requestState`. On the handshake era it is a `sampling/createMessage`
request in the middle of the call. Either way one call to `summarize` is one call for the
policy's limits: that is what the gateway test checks.
"""

from typing import Annotated

from mcp_types import CreateMessageResult, SamplingMessage, TextContent

from mcp.server.mcpserver import MCPServer, Resolve, Sample

server = MCPServer("asking")


def ask_llm(topic: str) -> Sample:
    return Sample(
        [SamplingMessage(role="user", content=TextContent(type="text", text=f"Summarize {topic}"))],
        max_tokens=20,
    )


@server.tool()
def summarize(topic: str, sampled: Annotated[CreateMessageResult, Resolve(ask_llm)]) -> str:
    """Summarizes a topic with the client's LLM."""
    content = sampled.content
    text = content.text if isinstance(content, TextContent) else "?"
    return f"summary of {topic}: {text}"


if __name__ == "__main__":
    server.run("stdio")
