"""llm/quant"""
