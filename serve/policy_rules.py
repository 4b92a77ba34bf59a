"""The input rail's rules, and the normalisation both rails read text through (`fold`).

Split from `serve.policy` (the policy, its config and the output rail), which explains the approach:
rules over several normalised views of a text (words only; spaced-out letters joined; leetspeak read
as letters; scrambled keywords restored; base64 runs decoded; rot13 or reversed text when the text
names them), measured by `python -m bench.policy_rails`.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Literal

Source = Literal["user", "transcript", "ocr", "document", "tool"]
# Text read from an image, a document or a tool has no reason to address the assistant: there, being
# spoken to is itself the sign. (A customer speaks to it in a message or a call: "dear assistant" is fine.)
MEDIA_SOURCES: frozenset[str] = frozenset({"ocr", "document", "tool"})
BASE64_MIN_CHARS = 16
BASE64_MIN_PRINTABLE = 0.9
HEADER_REST_CHARS = 200  # how far after "SYSTEM:" or "Dear assistant," an instruction is looked for


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------

# Unicode tag characters (U+E0020..E007E) spell ASCII invisibly ("ASCII smuggling"): read them as it.
_TAGS = {cp: cp - 0xE0000 for cp in range(0xE0020, 0xE007F)}
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e001f\U000e007f-\U000e01ef]"
)
# Look-alikes NFKC leaves alone (Unicode's confusables.txt, the Latin-looking subset), applied before
# case folding: Greek capital eta looks like H, its small letter like n.
_CONFUSABLES = str.maketrans(
    {
        **dict(zip("АВЕЅІЈКМНОРСТУХаеорсухіјѕԁԛԝһӏɡıℓ", "ABESIJKMHOPCTYXaeopcyxijsdqwhlgil", strict=True)),
        **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧαεικνορτυχ", "ABEZHIKMNOPTYXaeikvoptux", strict=True)),
        **dict(zip("ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ", "abcdefghijklmnoprstuvwyz", strict=True)),
    }
)
_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


def fold(text: str) -> str:
    """`text` as both rails read it: hidden tag text decoded, invisible characters dropped, NFKC,
    look-alikes mapped to Latin, case folded, accents dropped. Lengths may change."""
    text = _INVISIBLE.sub("", text.translate(_TAGS))
    text = unicodedata.normalize("NFKC", text).translate(_CONFUSABLES).casefold()
    return _MARKS.sub("", unicodedata.normalize("NFKD", text))



def _any(*words: str) -> str:
    return "(?:" + "|".join(words) + ")"


_W = r"[^\W_]+"  # one word of a words view
_NOT_MY = r"(?!(?:my|our|mine)\b)"  # a customer asks about *their* code; an attack about the company's

_OVERRIDE_VERB = _any(
    "ignore", "ignoring", "ignores", "ignorez", "ignoriere", "ignorieren", "ignora", "ignorar", "ignorate", "ignori",
    "disregard", "disregarding", "forget", "forgetting", "override", "overriding", "bypass", "bypassing",
    "set aside", "put aside", "throw out", "throw away", "discard", "abandon", "circumvent", "overlook",
    "neglect", "pay no attention to", "take no notice of",
    "stop following", "stop obeying", "quit following", "do not follow", "don t follow", "dont follow",
    "do not obey", "don t obey", "no longer follow", "no longer obey",
    "oublie", "oubliez", "oublies", "ne tiens pas compte", "ne tenez pas compte", "fais abstraction",
    "vergiss", "vergesst", "vergessen sie", "missachte", "missachten", "uberschreibe",
    "olvida", "olvide", "olviden", "olvidate", "omite", "omita", "descarta", "haz caso omiso",
    "dimentica", "dimentichi", "esqueca", "esquece",
)  # fmt: skip
# Words that may stand between the verb and what is overridden: determiners and the adjectives attacks
# use. A closed list: "ignore the delivery instructions" or "ignore the earlier address" don't match.
_OVERRIDE_FILLER = _any(
    "all", "any", "every", "each", "the", "your", "ur", "these", "those", "this", "that", "of", "and", "or",
    "previous", "previously", "prior", "above", "earlier", "preceding", "foregoing", "initial", "original",
    "former", "old", "existing", "current", "given", "company", "s", "system", "developer", "safety",
    "default", "standard", "usual", "built", "in", "internal", "hidden", "other", "its", "their",
    "de", "des", "les", "la", "le", "tes", "vos", "toutes", "tous", "tout", "precedentes", "precedents", "anterieures",
    "alle", "deine", "ihre", "die", "der", "den", "das", "vorherigen", "bisherigen", "vorigen", "fruheren",
    "todas", "todos", "tus", "sus", "las", "los", "el", "anteriores", "previas", "tutte", "tue", "precedenti",
    "as", "tuas",
)  # fmt: skip
_RULE_NOUN = _any(
    r"instructions?", "instr", "directions", r"directives?", r"rules?", r"guidelines?", "guidance", r"prompts?",
    "polic(?:y|ies)", "programming", r"commands?", "restrictions", r"filters?", "constraints", "guardrails",
    "boundaries", "limits", "limitations", "safeguards", "training",
    "consignes", "regles", "anweisungen", "regeln", "vorgaben", "richtlinien", "instruktionen", "befehle",
    "einschrankungen", "instrucciones", "reglas", "normas", "directrices", "indicaciones", "restricciones",
    "istruzioni", "regole", "instrucoes", "regras",
)  # fmt: skip
_EXTRACT_VERB = _any(
    "print", "show", "reveal", "repeat", "output", "display", "tell", "give", "share", "list", "dump", "leak",
    "spell", "recite", "read", "write", "copy", "paste", "translate", "summari[sz]e", "paraphrase", "describe",
    "respond", "reply", "send", "type", "provide", "expose", "disclose", "divulge", "return", "explain",
    "what is", "what are", "what was", "what were", "what s", "whats",
    "zeig", "zeige", "zeigen", "gib", "verrat", "verrate", "nenn", "nenne", "muestra", "muestrame", "dime",
    "revela", "revelame", "ensename", "montre", "montrez", "donne", "donnez", "revele", "revelez", "affiche",
    "dis", "dites", "mostra", "dimmi", "rivela",
)  # fmt: skip
_YOUR = _any("your", "ur", "deine", "deinen", "dein", "deiner", "tus", "tu", "tes", "vos", "votre", "ta", "tue", "tuoi")
_CONFIG_NOUN = _any(
    "instructions", "instruction", "prompt", "prompts", "rules", "guidelines", "directives", "programming",
    "configuration", "config", "setup", "guardrails", "policies",
    "anweisungen", "regeln", "vorgaben", "instrucciones", "reglas", "consignes", "regles", "istruzioni", "regole",
)  # fmt: skip
# "your instructions for returns" asks about a topic; "your instructions" alone asks for the prompt.
_ABOUT_A_TOPIC = r"(?! (?:are |is )?(?:for|on|about|regarding|concerning|of|to|when|if|with|around|re|say|says|mean)\b)"
_SECRET_THING = _any(
    rf"(?:staff|employee|employees|internal|secret|hidden|confidential|private|escalation|staff only|backdoor|master|admin)"
    rf"(?: {_W})? (?:discount |escalation |promo |access |override )?(?:code|codes|password|passcode|pin|key|token)",
    r"code (?:interne|secret|du personnel|de reduction du personnel|d escalade|d escalation)",
    r"(?:interne|internen|interner|geheime|geheimen|geheimer) (?:code|codes|schlussel|passwort|rabattcode)",
    r"mitarbeiter(?:rabatt|code)\w*",
    r"codigo (?:interno|secreto|del personal|de empleado|de escalamiento|de escalacion|de descuento del personal)",
    r"codice (?:interno|segreto)",
)
_JAIL_MODE = _any("developer", "dev", "god", "sudo", "jailbreak", "jailbroken", "unrestricted", "unfiltered", "uncensored", "dan", "unlocked", "evil", "opposite")
_ROLE_NOUN = _any(
    "system", "system administrator", "sysadmin", "developer", "admin", "administrator", "root", "superuser",
    "operator", "dan", "jailbroken", "unrestricted", "unfiltered", "uncensored", "evil", "rogue", "hacker",
)  # fmt: skip
_NO_LIMITS = _any(
    "restrictions", "limits", "limitations", "rules", "filters", "filtering", "censorship", "policy", "policies",
    "guidelines", "guardrails", "safety", "constraints", "boundaries", "instructions", "ethics", "morals",
)  # fmt: skip
# "You are now" in the languages the rail reads, and what a persona switch turns the assistant into.
_YOU_ARE_NOW = _any(
    "you are now", "you re now", "from now on you are", "tu es maintenant", "vous etes maintenant", "tu es desormais",
    "du bist jetzt", "du bist nun", "du bist ab sofort", "sie sind jetzt", "ahora eres", "ahora usted es", "ora sei",
    "da ora sei",
)  # fmt: skip
_BOT_NOUN = _any(
    "assistant", "assistent", "asistente", "assistente", "bot", "chatbot", "ai", "ia", "ki", "model", "modele", "modell",
    "modelo", "character", "persona",
)  # fmt: skip
_WITHOUT_LIMITS = (
    r"(?:without|sans|ohne|sin|senza|sem) (?:any |aucune |aucun |jegliche |irgendwelche |ningun |ninguna |alcuna |"
    r"your |the |a )?(?:restrictions?|limits?|limitations|rules|filters?|filtering|censorship|ethics|morals|guardrails|"
    r"regles|filtres|regeln|filter|einschrankungen|grenzen|filtros|reglas|restricciones|limites|regole|filtri|restrizioni)"
)
_AI = _any(
    "ai", "a i", "ki", "ia", "llm", "gpt", "chatgpt", "chatbot", "chat bot", "bot", "assistant", "assistants",
    "assistent", "assistenten", "asistente", "assistente", "language model", "sprachmodell", "modele de langage",
    "modelo de lenguaje", "ai model", "ai assistant", "ki assistent", "ki assistenten", "ai system", "model",
    "virtual assistant", "automated system", "automated systems", "automated assistant", "ai agent", "ai agents",
)  # fmt: skip
_ADDRESS = _any(
    "note", "notes", "message", "attention", "attn", "instructions", "instruction", "reminder", "notice", "memo",
    "warning", "important", "dear", "hey", "hi", "hello", "to", "for", "an", "fur", "para", "pour", "al", "au",
    "hinweis", "nota", "aviso", "achtung",
)  # fmt: skip
# What a text speaking to the assistant goes on to ask of it.
_COMMAND = _any(
    _OVERRIDE_VERB, "reveal", "print", "output", "say", "state", "tell", "confirm", "promise", "approve", "offer",
    "disclose", "share", "show", "give", "provide", "list", "repeat", "display", "expose", "leak",
    "respond", "answer", "reply", "write", "include", "send", "email", "you must", "you are", "you will",
    "you should", "do not", "don t", r"new instructions?", "gib", "zeige", "sage", "verrate", "revela", "di",
    "dile", "dis", "revele", "donne", "affiche",
)  # fmt: skip
_HEADER_CUE = _any(
    _OVERRIDE_VERB, "you are now", "you re now", "you are no longer", "you must", "you will", "you shall",
    r"new (?:rule|rules|policy|policies|instructions?|directives?)", "from now on", "effective immediately",
    "reveal", "comply", "mode", "enabled", "activated", "instructions", "prompt",
)  # fmt: skip

# (rule, regex) over the words views: folded, lower case, letters and digits in single-spaced words.
_WORD_RULES: tuple[tuple[str, str], ...] = (
    ("override_instructions", rf"\b{_OVERRIDE_VERB}(?: {_OVERRIDE_FILLER}){{0,5}} {_RULE_NOUN}\b"),
    (
        "forget_everything",
        r"\b(?:forget|ignore|disregard|erase|wipe)(?: about)? (?:everything|all|anything|what) (?:you (?:were|ve been|have been|"
        r"know|learned|learnt|got|have)|(?:that )?(?:was |is )?(?:said |written )?(?:above|before this|previously|so far|until now|up to now))\b",
    ),
    (
        "new_instructions",
        rf"\b(?:new|updated|revised|real|actual|true|secret|hidden|additional|override) (?:system )?(?:instructions?|rules?|"
        rf"polic(?:y|ies)|directives?|prompt|guidelines|orders)(?: {_W}){{0,3}} (?:you must|you will|you shall|you should|"
        r"you are|you re|from now on|effective immediately|effective now|are to|is to|are as follows|follow|supersedes?|"
        r"replaces?|overrides?|takes? effect|apply immediately)\b",
    ),
    (
        "system_notice",
        r"\bsystem (?:message|instructions?|notice|note|directive|override|update|alert|command|prompt) (?:new|ignore|disregard|"
        r"forget|overrides?|from now on|effective|you must|you will|you shall|you are now|reveal|the assistant must|assistant must)\b",
    ),
    ("system_notice", r"\b(?:important|urgent|priority|official|hidden|secret) system (?:instructions?|directive|prompt|override)\b"),
    ("role_play", rf"\byou (?:are|re|r) (?:now |no longer )?(?:in |entering |operating in |running in )?(?:a |an |the )?{_JAIL_MODE} mode\b"),
    ("role_play", r"\byou (?:are|re|r) (?:now )?(?:in |entering )?(?:admin|administrator|maintenance|debug|test|root|sudo) mode\b"),
    ("role_play", rf"\b(?:{_JAIL_MODE} mode|do anything now|jailbreak|jailbroken|jailbreaking|stay in character)\b"),
    ("role_play", rf"\byou (?:are|re) (?:now )?(?:the |a |an |my )?{_ROLE_NOUN}\b"),
    ("role_play", r"\byou (?:are|re) now (?:a |an )(?:different|new|unrestricted|uncensored|evil|free|rogue) (?:ai|assistant|bot|model|chatbot|character|persona)\b"),
    ("role_play", rf"\byou (?:are|re) no longer (?:an? )?(?:(?:{_W} ){{0,2}}(?:bot|chatbot|assistant|ai|model|agent)|bound|restricted|limited|required|subject|obliged)\b"),
    (
        "role_play",
        rf"\b(?:act|acting|behave|respond|answer|reply|speak|talk|pose|roleplay|role play|play)(?: {_W}){{0,2}} (?:as|like) "
        rf"(?:if you (?:are|were) )?(?:a |an |the |my )?(?:{_ROLE_NOUN}|(?:ai|assistant|model|chatbot|bot) (?:without|with no))\b",
    ),
    ("role_play", r"\bpretend (?:that )?(?:you are|you re|to be|you were|you have no)\b"),
    ("no_restrictions", rf"\byou (?:have|ve|got|now have) no {_NO_LIMITS}\b"),
    (
        "no_restrictions",
        rf"\b(?:answer|answers|answering|respond|responding|reply|replying|operate|operating|act|acting|behave|work|working|talk|"
        rf"speak|function|functioning|run|running)(?: {_W}){{0,3}} without (?:any |a |your |the )?{_NO_LIMITS}\b",
    ),
    (
        "no_restrictions",
        r"\b(?:disable|disabling|turn off|switch off|deactivate|remove|bypass|lift|suspend|circumvent)(?: (?:your|the|all|any|of))* "
        r"(?:safety |content )?(?:filters?|filtering|safeguards|guardrails|moderation|censorship|content filter|checks)\b",
    ),
    ("no_restrictions", r"\b(?:disable|lift|remove|bypass|suspend|drop) your (?:restrictions|rules|limitations|limits|safety|policies)\b"),
    (
        "no_restrictions",
        r"\b(?:(?:safety|content) (?:restrictions|policies|filters|rules|guidelines)|guardrails|safeguards|(?:your|all|previous|prior) "
        r"(?:rules|instructions|guidelines|restrictions|policies|filters)) (?:are|is|have been|has been|were) (?:now |hereby |"
        r"temporarily )?(?:suspended|disabled|lifted|removed|void|deactivated|turned off|switched off|revoked|overridden|cancell?ed)\b",
    ),
    (
        "override_instructions",
        rf"\b(?:your|the|all|any|previous|prior|earlier|former|old|original)(?: {_W})? (?:instructions|rules|guidelines|"
        r"guidance|directives|programming|restrictions|policies|prompt|orders)(?: you (?:were|ve been|have been) given| you "
        r"received)? (?:no longer apply|don t apply|do not apply|are void|are null|are invalid|are cancell?ed|are obsolete|"
        r"are revoked|are suspended|don t exist|do not exist|didn t exist|no longer exist|don t matter|do not matter|are gone|"
        r"have been (?:revoked|lifted|removed|cancell?ed|suspended))\b",
    ),
    ("role_play", rf"\b{_YOU_ARE_NOW} (?:a |an |un |une |ein |eine |einen |uno |una )?(?:{_W} ){{0,2}}{_BOT_NOUN}\b"),
    ("role_play", rf"\b(?:{_YOU_ARE_NOW}|(?:act|respond|answer|reply|speak|talk|behave) as)(?: {_W}){{0,4}} {_WITHOUT_LIMITS}\b"),
    ("role_play", r"\b(?:act|respond|answer|reply|speak|talk|behave) as (?:a |an )?[^\W_]*(?:bot|gpt)\b"),
    ("role_play", r"\b(?:who|that|which) (?:has|have) no (?:ethics|morals|moral compass|conscience|rules|restrictions|limits|filters)\b"),
    ("role_play", r"\b(?:i am|i m|this is) your (?:administrator|admin|developer|creator|owner|operator|programmer|maker|master|sysadmin)\b"),
    ("no_restrictions", r"\bif you (?:had|have|were given) no (?:rules|restrictions|limits|filters|guidelines|instructions|policy)\b"),
    (
        "reveal_instructions",
        r"\b(?:what|which) (?:instructions|rules|guidelines|directives|prompt) (?:were|have|did) you (?:been )?(?:given|told|"
        r"provided|fed|sent|receive|get)\b",
    ),
    (
        "reveal_instructions",
        r"\b(?:context window|(?:hidden|invisible|secret) (?:part|text|message|content|section|portion)|(?:first|last) \d+ "
        r"(?:words|lines|characters|tokens|sentences) of (?:this|the|our|your) (?:conversation|chat|context|prompt|instructions))\b",
    ),
    ("template_tokens", r"\b(?:begin|end|start) (?:of )?(?:the )?system (?:prompt|message|instructions?)\b"),
    (
        "system_prompt",
        r"\b(?:system ?prompts?|systemprompt|initial prompt|hidden prompt|secret prompt|original prompt|pre ?prompt|meta ?prompt|"
        r"prompt (?:du )?systeme|prompt de(?:l)? sistema|system ?anweisung(?:en)?)\b",
    ),
    (
        "system_prompt",
        rf"\b{_EXTRACT_VERB}(?: {_W}){{0,4}} (?:the |your )?(?:system|initial|original|hidden|secret|internal|developer|full|"
        rf"entire|whole|exact|complete|first|confidential|real|actual) {_CONFIG_NOUN}\b{_ABOUT_A_TOPIC}",
    ),
    ("reveal_instructions", rf"\b{_EXTRACT_VERB}(?: {_W}){{0,5}} {_YOUR}(?: {_W}){{0,2}} {_CONFIG_NOUN}\b{_ABOUT_A_TOPIC}"),
    (
        "reveal_instructions",
        rf"\b(?:repeat|print|output|show|display|echo|copy|reproduce|write|read|recite|summari[sz]e|translate|tell me|give me|"
        rf"list|dump|paste)(?: {_W}){{0,4}} (?:text|words|everything|content|contents|messages?|lines?|instructions|prompt|"
        rf"conversation|context|all|what)(?: {_W}){{0,3}} (?:above|before this|preceding|prior to|so far|at the (?:start|beginning|top)|"
        r"you (?:were|ve been|have been) (?:given|told|shown|fed|sent)|you received|that came before|before (?:my|this) (?:first )?message)\b",
    ),
    (
        "reveal_instructions",
        r"^(?=.*\b(?:word for word|verbatim|character for character|letter for letter|wort fur wort|mot pour mot|palabra por palabra)\b)"
        r"(?=.*\b(?:instructions?|prompt|rules|above|you were given|configuration|guidelines|secrets?)\b)",
    ),
    (
        "reveal_instructions",
        r"\bwhat (?:were|are|have|was|did) you (?:been )?(?:told|instructed|programmed|trained|configured|ordered|asked|forbidden|"
        r"not allowed|prohibited) (?:not to|to not|never to|never|to never|to hide|to keep|not)\b",
    ),
    ("reveal_instructions", r"\b(?:told|instructed|programmed|trained|configured) (?:you )?(?:not to|never to) (?:say|tell|reveal|share|mention|disclose|discuss)\b"),
    (
        "secret_request",
        rf"\b(?:{_EXTRACT_VERB}|need|want|know|verify|confirm|check|use|what|which)(?: {_NOT_MY}{_W}){{0,5}} {_SECRET_THING}\b",
    ),
    (
        "encoded_instructions",
        rf"\b(?:decode|decrypt|decipher|base64|rot13|unscramble|reverse)(?: {_W}){{0,6}} (?:and )?(?:then )?(?:follow|obey|execute|"
        r"run|comply|do what it says|do as it says|do what it asks|act on)\b",
    ),
)
# Rules for text that should not speak to the assistant at all (MEDIA_SOURCES).
_MEDIA_WORD_RULES: tuple[tuple[str, str], ...] = (
    ("addressed_to_ai", rf"\b{_ADDRESS}(?: (?:the|den|die|das|dem|der|el|la|le|l|any|all|every|an|a))? {_AI}\b(?=.{{0,{HEADER_REST_CHARS}}}\b{_COMMAND}\b)"),
    ("addressed_to_ai", r"\b(?:if|when) you are an? (?:ai|language model|llm|assistant|chatbot|bot)\b"),
    ("addressed_to_ai", rf"\b{_AI}s? (?:reading|processing|summari[sz]ing|parsing|analy[sz]ing|seeing) this\b"),
    (
        "addressed_to_ai",
        r"\b(?:whoever|anyone|anybody|whatever) (?:is )?(?:reading|processing|parsing|processes|reads|sees|summari[sz]ing|"
        r"summari[sz]es|handles|handling) this\b",
    ),
    ("addressed_to_ai", rf"\b(?:the |this |any )?{_AI} (?:should|must|shall|will|needs to|is to|has to|ought to)(?: now)? {_COMMAND}\b"),
)
# Rules over the folded text with its punctuation and lines (chat-template markup, "SYSTEM:" headers).
_LINE_START = r"(?:^|(?<=[\n\"'\[{(]))[ \t*#>\-\"'\[{(]*"
_PUNCT_RULES: tuple[tuple[str, str], ...] = (
    ("template_tokens", r"<\|\s*[a-z_]{2,30}\s*\|>"),
    ("template_tokens", r"\[/?inst\]|<</?sys>>|\[\s*/?\s*(?:system|sys|developer|admin)\s*\]"),
    ("template_tokens", r"</?(?:system|assistant|user|tool_result|tool_call|tool_response|instructions?|sys|start_of_turn|end_of_turn|im_start|im_end)>"),
    ("template_tokens", r"(?m:^)\s*#{2,}\s*(?:system|instructions?|assistant|user|response|human|new instructions?)\b"),
)
_ROLE_HEADER = re.compile(
    _LINE_START + r"(?:system|developer|admin|administrator|assistant|ai|bot|chatbot|root|operator|sysadmin)"
    r"(?: (?:message|instructions?|note|notice|override|prompt|update|directive|command|alert))?\s*[:\]>]"
    rf"(?P<rest>[^\n]{{0,{HEADER_REST_CHARS}}})"
)
_MEDIA_ROLE_HEADER = re.compile(_LINE_START + _AI + rf"\s*[:,](?P<rest>[^\n]{{0,{HEADER_REST_CHARS}}})")
_HEADER_CUE_RE = re.compile(rf"\b{_HEADER_CUE}\b")
_COMMAND_RE = re.compile(rf"\b{_COMMAND}\b")
# Spaced-out letters ("i g n o r e") written without gaps between the words: read glued together.
_COMPACT_RULES: tuple[tuple[str, str], ...] = (
    (
        "override_instructions",
        r"(?:ignore|disregard|forget)(?:all|any|the|your|of)*(?:previous|prior|above|earlier|preceding)?"
        r"(?:instructions?|rules|prompt|guidelines|directions)",
    ),
    ("system_prompt", r"systemprompt"),
    ("role_play", r"developermode|doanythingnow|jailbreak"),
)


def _compile(rules: Iterable[tuple[str, str]]) -> re.Pattern[str]:
    """One alternation with a group per rule, so a view is read once."""
    return re.compile("|".join(f"(?P<r{i}>{regex})" for i, (_, regex) in enumerate(rules)))


_WORD_RULES_RE, _MEDIA_WORD_RULES_RE = _compile(_WORD_RULES), _compile(_MEDIA_WORD_RULES)
_PUNCT_RULES_RE, _COMPACT_RULES_RE = _compile(_PUNCT_RULES), _compile(_COMPACT_RULES)

_NON_WORD = re.compile(r"[\W_]+")
_SPACED = re.compile(r"(?<![^\W_])(?:[^\W_][ .\-_*·]){2,}[^\W_](?![^\W_])")
_TOKEN = re.compile(r"\S+")
_LEETISH = re.compile(r"[a-z][0-9@$!|]|[0-9@$!|][a-z]")  # a letter next to a digit or symbol
_LEET = str.maketrans("0134578@$!|", "oieastbasil")
# Encodings a model can undo when told to, read when the text names them.
_ASKS_ROT13 = re.compile(r"\brot ?-?13\b|\bcaesar\b")
_ASKS_REVERSED = re.compile(r"\brevers|\bbackwards?\b|\bright to left\b")
_BASE64 = re.compile(rf"[A-Za-z0-9+/_-]{{{BASE64_MIN_CHARS},}}={{0,2}}")
# Scrambled keywords ("igrnoe", "intsructions"): read by their first and last letters and the rest in
# any order, as people read them.
_SCRAMBLE_KEYWORDS = (
    "ignore", "previous", "instructions", "instruction", "disregard", "forget", "system", "prompt", "reveal",
    "guidelines", "override", "restrictions", "developer", "directions", "secret", "escalation", "internal",
    "confidential", "jailbreak",
)  # fmt: skip
_UNSCRAMBLE = {(w[0], w[-1], "".join(sorted(w[1:-1]))): w for w in _SCRAMBLE_KEYWORDS}


def _words(text: str) -> str:
    return _NON_WORD.sub(" ", text).strip()


def _unscramble(words: str) -> str:
    out = []
    for word in words.split(" "):
        key = (word[0], word[-1], "".join(sorted(word[1:-1]))) if len(word) > 3 else None
        out.append(_UNSCRAMBLE.get(key, word) if key else word)
    return " ".join(out)


def _views(folded: str) -> tuple[list[str], str | None]:
    """The words views of a folded text (plain, spaced letters joined, leetspeak read, scrambled
    keywords restored) and, when letters were spaced out, its glued-together letters."""
    views = [_words(folded)]
    compact = None
    if _SPACED.search(folded):
        joined = _SPACED.sub(lambda m: _NON_WORD.sub("", m.group()), folded)
        views.append(_words(joined))
        compact = _NON_WORD.sub("", joined)
    if _LEETISH.search(folded):
        views.append(_words(_TOKEN.sub(lambda m: m.group().translate(_LEET) if _LEETISH.search(m.group()) else m.group(), folded)))
    if _ASKS_ROT13.search(folded):
        views.append(_words(codecs.decode(folded, "rot13")))
    if _ASKS_REVERSED.search(folded):
        views.append(_words(folded[::-1]))
    views += [u for v in views if (u := _unscramble(v)) != v]
    return list(dict.fromkeys(views)), compact


def _decoded_base64(text: str) -> list[str]:
    """Readable text hidden in base64 runs of `text`."""
    found = []
    for match in _BASE64.finditer(text):
        run = match.group().rstrip("=").replace("-", "+").replace("_", "/")
        try:
            raw = base64.b64decode(run + "=" * (-len(run) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        if decoded and sum(ch.isprintable() or ch.isspace() for ch in decoded) / len(decoded) >= BASE64_MIN_PRINTABLE:
            found.append(decoded)
    return found


def _fired(pattern: re.Pattern[str], rules: Sequence[tuple[str, str]], text: str) -> set[str]:
    return {rules[int(m.lastgroup[1:])][0] for m in pattern.finditer(text)}


def injection_rules(text: str, source: Source) -> set[str]:
    """The names of the input rail's rules that fire on `text` from `source`."""
    folded = fold(text)
    views, compact = _views(folded)
    fired = _fired(_PUNCT_RULES_RE, _PUNCT_RULES, folded)
    for match in _ROLE_HEADER.finditer(folded):
        if _HEADER_CUE_RE.search(_words(match.group("rest"))):
            fired.add("role_header")
    media = source in MEDIA_SOURCES
    if media:
        for match in _MEDIA_ROLE_HEADER.finditer(folded):
            if _COMMAND_RE.search(_words(match.group("rest"))):
                fired.add("addressed_to_ai")
    for view in views:
        fired |= _fired(_WORD_RULES_RE, _WORD_RULES, view)
        if media:
            fired |= _fired(_MEDIA_WORD_RULES_RE, _MEDIA_WORD_RULES, view)
    if compact:
        fired |= _fired(_COMPACT_RULES_RE, _COMPACT_RULES, compact)
    for decoded in _decoded_base64(text):
        fired |= {f"base64/{rule}" for rule in injection_rules(decoded, source)}
    return fired
