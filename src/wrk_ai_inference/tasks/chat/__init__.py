"""The conversation core below every language-model protocol: the conversation's shape,
tools and the choice among them, tool-call formats per template family, their grammars,
and the stream that tells a call from text as it is generated."""
