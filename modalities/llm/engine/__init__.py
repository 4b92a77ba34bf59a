"""llm/engine"""
