"""Built-in sample data and tiny model, so tests and a laptop search run offline.

    SAMPLE = "builtin:sample"   synthetic Korean dialogues in the competition CSV layout
    TINY = "builtin:tiny"       a small BART pretrained on synthetic Korean text + a BPE tokenizer
                                trained on the sample (shipped; see trainer/run/pretrain.py)

Summaries are templates filled with the slot words (dishes, places, times) that the dialogue
itself says, plus the speaker and masking tags, so a tiny model can learn them in a few epochs.
torch/transformers are imported inside functions: the CLI imports this module and must start fast.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path

from trainer.run.files import atomic_write

SAMPLE = "builtin:sample"
TINY = "builtin:tiny"

SAMPLE_VERSION = "sample-v1"
SIZES = {"train": 400, "dev": 40}
SEED = 20240917

# KoBART's special tokens, in id order (<s>=0 ... <mask>=6).
SPECIAL_TOKENS = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>"]

P1, P2, P3 = "#Person1#", "#Person2#", "#Person3#"
PHONE, ADDRESS, EMAIL, BIRTH = "#PhoneNumber#", "#Address#", "#Email#", "#DateOfBirth#"


# ---------------------------------------------------------------- Korean particles (josa)

PARTICLES = [("은", "는"), ("이", "가"), ("을", "를"), ("과", "와"), ("으로", "로"), ("이에요", "예요")]

# How a tag is read aloud decides its particle: 원 (#Person1#) has a final consonant, 투 has not.
TAG_FINAL = {P1: "ㄴ", P2: "", P3: "", PHONE: "", ADDRESS: "", EMAIL: "ㄹ", BIRTH: ""}
DIGIT_FINAL = {"0": "ㅇ", "1": "ㄹ", "2": "", "3": "ㅁ", "4": "", "5": "", "6": "ㄱ", "7": "ㄹ", "8": "ㄹ", "9": ""}


def final_consonant(word: str) -> str:
    """'' when word ends in a vowel, 'ㄹ' for a final rieul, another consonant mark otherwise."""
    if word in TAG_FINAL:
        return TAG_FINAL[word]
    last = word[-1]
    if last in DIGIT_FINAL:
        return DIGIT_FINAL[last]
    if "가" <= last <= "힣":
        jong = (ord(last) - 0xAC00) % 28
        return "" if jong == 0 else ("ㄹ" if jong == 8 else "ㄱ")
    return ""  # Latin letters: read as a vowel ending ("S 사이즈" is caught above anyway)


def josa(word: str, particle: str) -> str:
    pair = next(p for p in PARTICLES if particle in p)
    final = final_consonant(word)
    if pair[0] == "으로":
        return word + ("으로" if final and final != "ㄹ" else "로")
    return word + (pair[0] if final else pair[1])


def fill(template: str, values: dict) -> str:
    """'{food|을}' -> value of food plus 을/를 as its last sound requires; '{food}' -> the value."""

    def one(match: re.Match) -> str:
        word = values[match.group(1)]
        return josa(word, match.group(2)) if match.group(2) else word

    return re.sub(r"\{(\w+)(?:\|(\w+))?\}", one, template)


# ---------------------------------------------------------------- the generator, one function per topic
# Each returns (turns, summary_template, slots): turns are (speaker, template) pairs. The slots are
# the content words put into the summary; every one of them is also said in the dialogue.

TAGS = {"p1": P1, "p2": P2, "p3": P3, "phone": PHONE, "addr": ADDRESS, "email": EMAIL, "birth": BIRTH}


def food_order(rng: random.Random):
    slots = {
        "food": rng.choice(["김치찌개", "된장찌개", "불고기", "비빔밥", "제육볶음", "순두부찌개", "냉면", "떡볶이", "갈비탕", "칼국수"]),
        "qty": rng.choice(["한 그릇", "두 그릇", "세 그릇", "네 그릇"]),
        "side": rng.choice(["계란말이", "김치전", "군만두", "공깃밥", "어묵탕", "감자전"]),
    }
    turns = [
        (P1, rng.choice(["안녕하세요, 음식 주문 좀 하려고 전화했어요.", "여보세요, 거기 한식당이죠? 주문하고 싶은데요."])),
        (P2, "네, 감사합니다. 오늘은 모든 메뉴가 주문 가능해요. 어떤 메뉴로 준비해 드릴까요?"),
        (P1, "{food} {qty|과} {side} 하나 부탁드려요. 너무 맵지 않게 해 주세요."),
    ]
    if rng.random() < 0.6:
        slots["wait"] = rng.choice(["20분", "30분", "40분", "50분"])
        turns += [
            (P2, "{food} {qty}, {side} 하나 맞으시죠? 배달해 드릴 주소를 알려 주세요."),
            (P1, "주소는 {addr}, 연락처는 {phone}입니다."),
            (P2, "네, 음식은 {wait} 정도 걸릴 예정입니다."),
        ]
        summary = ("{p1|은} {p2}에게 {food} {qty|과} {side|을} 배달 주문하고 주소 {addr|와} 연락처 {phone|을} "
                   "알려 준다. 음식은 {wait} 정도 뒤에 도착할 예정이다.")
    else:
        slots["pickup"] = rng.choice(["6시", "6시 반", "7시", "7시 반", "8시"])
        turns += [
            (P2, "{food} {qty}, {side} 하나 맞으시죠? 배달인가요, 포장인가요?"),
            (P1, "포장할게요. {pickup}에 찾으러 갈게요. 연락처는 {phone}입니다."),
            (P2, "네, {pickup}까지 준비해 두겠습니다."),
        ]
        summary = ("{p1|은} {p2}에게 {food} {qty|과} {side|을} 포장 주문하고 {pickup}에 찾으러 가기로 한다. "
                   "연락처로 {phone|을} 남긴다.")
    if rng.random() < 0.5:
        turns.append((P1, "혹시 일회용 수저는 빼 주실 수 있나요? 집에 많아서요."))
        turns.append((P2, "네, 수저는 빼 드릴게요. 주문해 주셔서 감사합니다."))
    else:
        turns.append((P1, "네, 감사합니다. 맛있게 잘 먹을게요."))
    return turns, summary, slots


SYMPTOMS = {
    "내과": ["기침", "복통", "고열"],
    "치과": ["치통", "잇몸 통증"],
    "안과": ["눈 충혈", "시력 저하"],
    "피부과": ["피부 가려움", "두드러기"],
    "정형외과": ["허리 통증", "무릎 통증", "손목 통증"],
    "이비인후과": ["목 통증", "코막힘", "귀 통증"],
}


def hospital(rng: random.Random):
    dept = rng.choice(sorted(SYMPTOMS))
    slots = {
        "dept": dept,
        "symptom": rng.choice(SYMPTOMS[dept]),
        "day": rng.choice(["월요일", "화요일", "수요일", "목요일", "금요일", "토요일"]),
        "time": rng.choice(["오전 9시", "오전 10시", "오전 11시", "오후 2시", "오후 3시", "오후 4시"]),
        "doctor": rng.choice(["김 선생님", "이 선생님", "박 선생님", "최 선생님"]),
    }
    turns = [
        (P1, "안녕하세요, {dept} 진료를 예약하고 싶어서 전화드렸어요."),
        (P2, "네, 어디가 불편하셔서 오시려고 하나요?"),
        (P1, rng.choice(["며칠 전부터 {symptom|이} 계속돼서요.", "어제부터 {symptom|이} 심해져서요."])),
        (P2, "{day} {time}에 {doctor} 진료가 가능한데 괜찮으세요?"),
        (P1, "네, 그 시간이 괜찮아요. 그때로 예약해 주세요."),
    ]
    summary = "{p1|은} {symptom} 때문에 {dept} 진료를 예약하고, {p2|은} {day} {time}에 {doctor}께 진료를 받을 수 있다고 안내한다."
    if rng.random() < 0.5:
        turns += [
            (P2, "처음 오시는 거면 생년월일을 알려 주세요."),
            (P1, "{birth}입니다."),
            (P2, "확인했습니다. 오실 때 신분증을 꼭 가져오세요."),
        ]
        summary += " {p1|은} 처음 방문이라 생년월일 {birth|을} 알려 준다."
    else:
        turns.append((P2, "예약되었습니다. {phone|으로} 안내 문자를 보내 드릴게요."))
        turns.append((P1, "감사합니다."))
        summary += " 안내 문자는 {phone|으로} 받는다."
    return turns, summary, slots


def travel(rng: random.Random):
    slots = {
        "place": rng.choice(["제주도", "부산", "강릉", "경주", "여수", "전주", "속초"]),
        "when": rng.choice(["다음 주말", "다음 달 초", "여름휴가", "겨울방학", "추석 연휴"]),
        "nights": rng.choice(["1박 2일", "2박 3일", "3박 4일"]),
        "transport": rng.choice(["기차", "고속버스", "비행기", "자동차"]),
        "activity": rng.choice(["바다 구경", "시장 구경", "맛집 탐방", "등산", "박물관 관람"]),
        "budget": rng.choice(["20만 원", "30만 원", "40만 원", "50만 원"]),
    }
    turns = [
        (P1, "우리 {when}에 같이 여행 갈래? 요즘 일이 많아서 좀 쉬고 싶어. {place} 어때?"),
        (P2, "좋아. 나도 {place}에 꼭 가 보고 싶었어. 가면 {activity|을} 하고 싶어."),
        (P1, "그럼 {nights|으로} 다녀오자. 교통편은 {transport|이} 제일 편할 것 같아."),
        (P2, "좋아, 표는 내가 이번 주 안에 알아볼게."),
    ]
    who = "{p1}, {p2}, {p3|은}" if rng.random() < 0.4 else "{p1|과} {p2|은}"
    summary = who + " {when}에 {transport|을} 타고 {place|으로} {nights} 여행을 가서 {activity|을} 하기로 한다."
    if "p3" in who:
        turns += [
            (P3, "나도 같이 가도 돼? 숙소는 내가 예약할게. 확인 메일은 {email|으로} 받을게."),
            (P1, "물론이지. 숙소는 너한테 맡길게."),
        ]
        summary += " {p3|이} 숙소를 예약하고 확인 메일을 {email|으로} 받는다."
    # with three friends #Person1# has just spoken, so #Person2# proposes the budget
    turns.append((P2 if "p3" in who else P1, "예산은 한 사람당 {budget} 정도로 하자. 너무 많이 쓰지 말고."))
    summary += " 예산은 한 사람당 {budget|으로} 정한다."
    return turns, summary, slots


def shopping(rng: random.Random):
    slots = {
        "item": rng.choice(["청바지", "니트", "코트", "셔츠", "후드티", "원피스", "재킷"]),
        "color": rng.choice(["검은색", "흰색", "회색", "남색", "베이지색"]),
        "size": rng.choice(["S 사이즈", "M 사이즈", "L 사이즈", "XL 사이즈"]),
        "price": rng.choice(["3만 원", "4만 5천 원", "5만 원", "7만 원", "9만 원", "12만 원"]),
        "discount": rng.choice(["10퍼센트", "20퍼센트", "30퍼센트"]),
        "payment": rng.choice(["카드", "현금"]),
    }
    turns = [
        (P1, rng.choice(["저기요, 이 {item} {color}도 있나요?", "실례지만 이 {item} {color|으로} 볼 수 있을까요?"])),
        (P2, "네, 마침 하나 남아 있어요. 사이즈는 어떻게 찾으세요?"),
        (P1, "{size|으로} 주세요. 가격이 얼마예요?"),
        (P2, "{price}인데 이번 주까지 {discount} 할인해 드려요."),
        (P1, "생각보다 괜찮네요. 이걸로 살게요. {payment|으로} 계산할게요."),
    ]
    summary = "{p1|은} {p2}의 가게에서 {color} {item|을} {size|으로} 고르고, {price}에서 {discount} 할인을 받아 {payment|으로} 계산한다."
    if rng.random() < 0.5:
        turns += [
            (P2, "회원이시면 포인트를 적립해 드릴게요. 전화번호를 알려 주시겠어요?"),
            (P1, "{phone}예요."),
        ]
        summary += " 포인트는 {phone|으로} 적립한다."
    turns.append((P2, "감사합니다. 또 오세요."))
    return turns, summary, slots


def moving(rng: random.Random):
    slots = {
        "date": rng.choice(["이번 주 토요일", "다음 주 월요일", "이달 말", "다음 달 3일", "다음 달 15일"]),
        "company": rng.choice(["한결이사", "믿음이사", "든든이사", "바른이사"]),
        "price": rng.choice(["80만 원", "100만 원", "120만 원", "150만 원"]),
        "heavy": rng.choice(["피아노", "냉장고", "침대", "책장", "세탁기"]),
    }
    turns = [
        (P1, "여보, 이사 날짜를 {date|으로} 잡았어."),
        (P2, "잘됐다. 이삿짐센터는 어디로 했어?"),
        (P1, "{company}에 맡겼어. 견적은 {price} 나왔어."),
        (P2, "{heavy|은} 따로 옮겨야 하지 않을까?"),
        (P1, "{company}에서 {heavy}까지 같이 옮겨 준대."),
        (P2, "새 집 주소 {addr|은} 인터넷 설치 기사님께도 알려 줘야 해."),
    ]
    summary = ("{p1|과} {p2|은} {date}에 이사하기로 하고 {company}에 {price|으로} 이삿짐을 맡긴다. "
               "{heavy}도 함께 옮기고 새 주소 {addr|을} 인터넷 기사에게 알리기로 한다.")
    if rng.random() < 0.4:
        turns += [
            (P3, "엄마, 저도 짐 싸는 거 도울게요."),
            (P2, "고마워, 그럼 네가 책 정리를 맡아 줘."),
        ]
        summary += " {p3|은} 책 정리를 돕기로 한다."
    return turns, summary, slots


def interview(rng: random.Random):
    slots = {
        "company": rng.choice(["한빛전자", "미래소프트", "푸른식품", "대한물산", "새솔디자인"]),
        "role": rng.choice(["마케팅", "회계", "소프트웨어 개발", "디자인", "영업"]),
        "years": rng.choice(["2년", "3년", "5년", "7년"]),
        "strength": rng.choice(["꼼꼼함", "책임감", "소통 능력", "문제 해결 능력"]),
        "result": rng.choice(["다음 주 수요일", "이번 주 금요일", "사흘 뒤", "일주일 뒤"]),
    }
    turns = [
        (P1, "어서 오세요. 앉으세요. {company} {role} 직무에 지원하셨죠? 간단히 경력을 소개해 주세요."),
        (P2, "네, 이전 회사에서 {role} 업무를 {years} 동안 했고 팀 프로젝트도 여러 번 맡았습니다."),
        (P1, "본인의 가장 큰 장점은 무엇이라고 생각하세요?"),
        (P2, "저는 {strength|이} 가장 큰 장점이라고 생각합니다."),
    ]
    summary = "{p2|은} {company}의 {role} 직무 면접에서 {p1}에게 경력 {years|과} 장점인 {strength|을} 설명한다."
    if rng.random() < 0.5:
        turns += [
            (P1, "결과는 {result}에 이메일로 보내 드릴게요. 주소가 {email} 맞으세요?"),
            (P2, "네, 맞습니다. 감사합니다. 연락 기다리겠습니다."),
        ]
        summary += " {p1|은} 결과를 {result}에 {email|으로} 보내 주기로 한다."
    else:
        turns += [
            (P1, "좋습니다. 결과는 {result}에 전화로 알려 드리겠습니다."),
            (P2, "감사합니다. 연락 기다리겠습니다."),
        ]
        summary += " {p1|은} 결과를 {result}에 전화로 알려 주기로 한다."
    return turns, summary, slots


def hotel(rng: random.Random):
    slots = {
        "checkin": rng.choice(["이번 금요일", "이번 토요일", "다음 주 화요일", "12월 24일", "내일"]),
        "nights": rng.choice(["하룻밤", "이틀 밤", "사흘 밤"]),
        "room": rng.choice(["싱글룸", "더블룸", "트윈룸", "스위트룸"]),
        "guests": rng.choice(["한 명", "두 명", "세 명", "네 명"]),
    }
    turns = [
        (P1, "안녕하세요, {checkin}부터 {nights} 묵을 방을 예약하고 싶어요."),
        (P2, "네, 몇 분이 묵으실 예정인가요?"),
        (P1, "{guests|이에요}. 가능하면 조용한 방으로 부탁드려요."),
        (P2, "그럼 {room|을} 추천해 드려요. 조식도 추가하시겠어요?"),
    ]
    summary = "{p1|은} {p2}에게 {checkin}부터 {nights} 동안 {guests|이} 묵을 {room|을} 예약하고"
    if rng.random() < 0.5:
        turns.append((P1, "네, 조식도 넣어 주세요."))
        summary += " 조식도 추가한다."
    else:
        turns.append((P1, "아니요, 조식은 괜찮아요."))
        summary += " 조식은 신청하지 않는다."
    turns += [
        (P2, "예약 확인서는 이메일로 보내 드릴게요. 주소를 알려 주세요."),
        (P1, "{email}입니다."),
        (P2, "예약이 완료되었습니다. 좋은 하루 보내세요."),
    ]
    summary += " 예약 확인서는 {email|으로} 받는다."
    return turns, summary, slots


def lost_item(rng: random.Random):
    slots = {
        "item": rng.choice(["지갑", "휴대폰", "우산", "노트북", "가방", "이어폰"]),
        "place": rng.choice(["지하철 2호선", "버스 정류장", "도서관", "카페", "영화관"]),
        "when": rng.choice(["어제 저녁", "오늘 아침", "오늘 점심", "그저께 밤"]),
        "color": rng.choice(["검은색", "빨간색", "파란색", "갈색", "흰색"]),
    }
    turns = [
        (P1, "저기요, {item|을} 잃어버려서 신고하러 왔어요."),
        (P2, "많이 놀라셨겠어요. 언제 어디에서 잃어버리셨어요?"),
        (P1, "{when}에 {place}에서 잃어버린 것 같아요."),
        (P2, "어떤 {item}인지 특징을 말씀해 주세요."),
        (P1, "{color} {item|이에요}. 산 지 얼마 안 된 거라 꼭 찾고 싶어요."),
    ]
    if rng.random() < 0.35:
        turns += [
            (P3, "혹시 이 {color} {item} 말씀하시는 건가요? 아까 누가 맡기고 갔어요."),
            (P1, "네, 맞아요! 정말 감사합니다."),
        ]
        summary = "{p1|은} {when} {place}에서 잃어버린 {color} {item|을} {p2}에게 신고하는데, 마침 {p3|이} 맡겨진 {item|을} 찾아 준다."
    else:
        turns += [
            (P2, "연락처를 남겨 주시면 찾는 대로 알려 드릴게요."),
            (P1, "{phone|으로} 연락 주세요."),
        ]
        summary = "{p1|은} {when} {place}에서 잃어버린 {color} {item|을} {p2}에게 신고하고, {p2|이} 찾으면 {phone|으로} 연락을 받기로 한다."
    return turns, summary, slots


TOPICS = {
    "음식 주문": food_order,
    "병원 예약": hospital,
    "여행 계획": travel,
    "쇼핑": shopping,
    "이사": moving,
    "취업 면접": interview,
    "호텔 예약": hotel,
    "분실물 신고": lost_item,
}


def generate(topic: str, rng: random.Random) -> dict:
    """One example of the topic: its row fields, the slots used, and a key naming its slot combination."""
    turns, summary, slots = TOPICS[topic](rng)
    values = {**TAGS, **slots}
    return {
        "dialogue": "\n".join(f"{who}: {fill(text, values)}" for who, text in turns),
        "summary": fill(summary, values),
        "topic": topic,
        "slots": slots,
        "key": (topic, tuple(sorted(slots.items()))),
    }


def examples(split: str) -> list[dict]:
    """The split's rows, with the slots used (for tests). Train and dev come from one seeded stream,
    round-robin over topics; a slot combination already used is skipped, so dev is held out."""
    if split not in SIZES:
        raise ValueError(f"builtin sample split must be one of {sorted(SIZES)}, got {split!r}")
    rng = random.Random(SEED)
    seen: set = set()
    rows: dict[str, list[dict]] = {"train": [], "dev": []}
    for name in ("train", "dev"):
        while len(rows[name]) < SIZES[name]:
            row = generate(list(TOPICS)[len(rows[name]) % len(TOPICS)], rng)
            if row["key"] in seen:
                continue
            seen.add(row.pop("key"))
            rows[name].append({"fname": f"{name}_{len(rows[name])}", **row})
    return rows[split]


# ---------------------------------------------------------------- files in the cache

def sample_csv(split: str, cache_dir: str | Path) -> Path:
    """<cache_dir>/builtin/sample-v1/<split>.csv (columns fname,dialogue,summary,topic), written once."""
    rows = examples(split)  # validates split before touching the disk
    path = Path(cache_dir) / "builtin" / SAMPLE_VERSION / f"{split}.csv"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["fname", "dialogue", "summary", "topic"])
    for row in rows:
        writer.writerow([row["fname"], row["dialogue"], row["summary"], row["topic"]])
    atomic_write(path, out.getvalue().encode("utf-8"))
    return path


def train_tokenizer(texts: list[str]):
    """BPE over Metaspace pieces, KoBART's special tokens at ids 0-6, byte fallback for unseen
    characters (real Korean data has syllables the sample never uses), no post-processor: like
    KoBART it adds no <s>/</s> itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # "first": no ▁ is prepended after an added token, so "#Person1#은" decodes without a space.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=3000, special_tokens=SPECIAL_TOKENS, show_progress=False))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="first")])
    return tok


TINY_DIR = Path(__file__).with_name("tiny")


def tiny_model() -> Path:
    """trainer/run/tiny/: the tokenizer and the small BART pretrained by trainer/run/pretrain.py,
    shipped with the package (1.7 MB), so no run pays for pretraining. Read only."""
    return TINY_DIR
