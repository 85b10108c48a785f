"""Tests of report cleaning, section extraction, prompt expansion and TokenizeReportd."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Tokenizer, LlamaTokenizer

from monai_r2gen.data.reports import (
    DEFAULT_PROMPT,
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN,
    TokenizeReportd,
    clean_report,
    encode_prompt,
    expand_prompt,
    extract_sections,
    select_target,
)
from monai_r2gen.data.tokenizer import add_image_token
from monai_r2gen.errors import ReportError
from tests.data.test_tokenizer import REPORT_CORPUS, make_tokenizer

# A raw MIMIC-CXR style free-text report: banner, wet read, de-identification blanks, wrapped lines, double spaces,
# numbered impression.
MIMIC_RAW = """\
 WET READ: ___ ___ ___ 10:20 AM
  No acute cardiopulmonary process.
 ______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.  Clips project over the left lung,
 potentially within the breast. The imaged upper abdomen is unremarkable.

 IMPRESSION:

 1. No acute cardiopulmonary process.
 2. Nodular opacities, likely nipple shadows; repeat with nipple markers.

 NOTIFICATION:  The findings were discussed with Dr. ___ by ___ on the telephone on ___ at 11:05 AM.
"""

MIMIC_FINDINGS = (
    "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities that most likely "
    "represent nipple shadows. The cardiomediastinal silhouette is normal. Clips project over the left lung, "
    "potentially within the breast. The imaged upper abdomen is unremarkable."
)
MIMIC_IMPRESSION = (
    "1. No acute cardiopulmonary process. 2. Nodular opacities, likely nipple shadows; repeat with nipple markers."
)


# ----------------------------------------------------------------------------------------------------------------
# cleaning
# ----------------------------------------------------------------------------------------------------------------


def test_clean_mimic_findings():
    assert clean_report(MIMIC_FINDINGS, "mimic_cxr") == (
        "there is no focal consolidation pleural effusion or pneumothorax . bilateral nodular opacities that most "
        "likely represent nipple shadows . the cardiomediastinal silhouette is normal . clips project over the left "
        "lung potentially within the breast . the imaged upper abdomen is unremarkable ."
    )


def test_clean_mimic_numbering_blanks_and_line_breaks():
    text = (
        "FINAL REPORT\n 1.  Interval placement of a right  internal jugular line,\n tip in the SVC.\n"
        " 2. Dr. ___ was paged at ___ (___).  3. Severity: moderate.. 4. Heart size normal."
    )
    assert clean_report(text, "mimic_cxr") == (
        "interval placement of a right internal jugular line tip in the svc . dr . was paged at . "
        "severity moderate . heart size normal ."
    )


def test_clean_iu_xray_reports():
    # IU-Xray: XXXX de-identification kept as a word, numbered impressions, double periods
    assert clean_report("1. No acute cardiopulmonary abnormality.. 2. Stable XXXX sternotomy.", "iu_xray") == (
        "no acute cardiopulmonary abnormality . stable xxxx sternotomy ."
    )
    text = "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear."
    assert clean_report(text, "iu_xray") == (
        "the heart is normal in size . the mediastinum is unremarkable . the lungs are clear ."
    )
    # list numbering without a period before the next number (" 2. " ends the previous item)
    assert clean_report("1. Normal chest 2. No pneumothorax", "iu_xray") == "normal chest . no pneumothorax ."


def test_clean_keeps_decimals_hyphens_and_non_list_numbers():
    text = "A 2.5 cm left-sided nodule. Grade 3. Right-sided PICC (4.5 cm) terminates at T12."
    assert clean_report(text, "iu_xray") == (
        "a 2.5 cm left-sided nodule . grade 3 . right-sided picc 4.5 cm terminates at t12 ."
    )


def test_clean_removes_r2gen_punctuation_set():
    text = 'Heart/mediastinum: "normal"; patient\'s <lungs> = clear! [a] {b} 50% a+b & c_d @e * f ? g'
    assert clean_report(text, "mimic_cxr") == "heartmediastinum normal patients lungs clear a b 50 ab cd e f g ."


@pytest.mark.parametrize("style", ["iu_xray", "mimic_cxr"])
def test_clean_is_idempotent_and_handles_empty(style):
    for text in (MIMIC_FINDINGS, MIMIC_IMPRESSION, "1. Normal chest 2. No pneumothorax", *REPORT_CORPUS[:5]):
        once = clean_report(text, style)
        assert once and clean_report(once, style) == once
        assert "  " not in once and once.endswith(" .")
    assert clean_report("", style) == ""
    assert clean_report("  ...  ___ \n", style) == ""


def test_clean_style_none_and_errors():
    assert clean_report("  Heart   size:\nNormal.  ", "none") == "Heart size: Normal."
    with pytest.raises(ReportError, match="style"):
        clean_report("x", "chexpert")
    with pytest.raises(ReportError, match="string"):
        clean_report(None, "iu_xray")  # type: ignore[arg-type]


def test_banner_is_dropped_only_in_mimic_style():
    assert clean_report("FINAL REPORT\nLungs are clear.", "mimic_cxr") == "lungs are clear ."
    assert clean_report("FINAL REPORT\nLungs are clear.", "iu_xray") == "final report lungs are clear ."


# ----------------------------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------------------------


def test_extract_sections_from_full_mimic_report():
    sections = extract_sections(MIMIC_RAW)
    assert sections == {"findings": MIMIC_FINDINGS, "impression": MIMIC_IMPRESSION}


def test_select_target_variants():
    assert select_target(MIMIC_RAW, "findings") == MIMIC_FINDINGS
    assert select_target(MIMIC_RAW, "impression") == MIMIC_IMPRESSION
    assert select_target(MIMIC_RAW, "findings+impression") == f"{MIMIC_FINDINGS} {MIMIC_IMPRESSION}"
    with pytest.raises(ReportError, match="target"):
        select_target(MIMIC_RAW, "history")


def test_combined_findings_and_impression_heading():
    text = "INDICATION: Cough.\nFINDINGS AND IMPRESSION: Lungs are clear. No effusion.\nRECOMMENDATION(S): None."
    assert extract_sections(text) == {"findings": "Lungs are clear. No effusion.",
                                      "impression": "Lungs are clear. No effusion."}  # fmt: skip
    assert select_target(text, "findings+impression") == "Lungs are clear. No effusion."  # only once


def test_conclusion_heading_and_missing_findings():
    text = "HISTORY: Fever.\n\nTECHNIQUE: AP portable.\n\nCONCLUSION: Mild pulmonary edema."
    assert extract_sections(text) == {"findings": "", "impression": "Mild pulmonary edema."}
    assert select_target(text, "findings") == ""  # headings present but no findings: nothing to train on
    assert select_target(text, "findings+impression") == "Mild pulmonary edema."


def test_other_headings_end_a_section():
    text = (
        "FINDINGS: Heart size is normal. PICC: tip in the SVC.\n"
        "IMPRESSION: No acute process.\n"
        "WET READ VERSION #1 ___ ___ 11:25 PM\n  Possible left basilar opacity.\n"
        "COMPARISON: Chest radiograph from ___."
    )
    sections = extract_sections(text)
    # "PICC:" does not start a heading (short abbreviation inside the findings)
    assert sections["findings"] == "Heart size is normal. PICC: tip in the SVC."
    assert sections["impression"] == "No acute process."


def test_flattened_one_line_report_and_title_case_headings():
    flat = "EXAMINATION: CHEST PA AND LAT INDICATION: Cough. FINDINGS: Lungs are clear. IMPRESSION: Normal chest."
    assert extract_sections(flat) == {"findings": "Lungs are clear.", "impression": "Normal chest."}
    titled = "Findings:\nThe lungs are clear.\nImpression:\nNo acute disease.\n"
    assert extract_sections(titled) == {"findings": "The lungs are clear.", "impression": "No acute disease."}
    # lower-case "findings:" inside a sentence is not a heading
    inline = "FINDINGS: Unchanged compared to prior findings: mild cardiomegaly."
    assert extract_sections(inline)["findings"] == "Unchanged compared to prior findings: mild cardiomegaly."


def test_repeated_sections_are_joined_and_addendum_ends_them():
    text = "FINDINGS: Lungs clear.\nIMPRESSION: Normal.\nADDENDUM: Second look.\nFINDINGS: Stable nodule."
    assert extract_sections(text) == {"findings": "Lungs clear. Stable nodule.", "impression": "Normal."}


def test_headerless_text_is_already_a_section():
    text = "The heart is normal in size.\nThe lungs are clear."
    assert extract_sections(text) == {"findings": "", "impression": ""}
    for target in ("findings", "impression", "findings+impression"):
        assert select_target(text, target) == "The heart is normal in size. The lungs are clear."
    assert select_target("FINAL REPORT\n Lungs are clear.", "findings") == "Lungs are clear."
    assert select_target("", "findings") == ""


# ----------------------------------------------------------------------------------------------------------------
# prompt
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 49])
def test_expand_prompt_inserts_k_image_tokens(k):
    prompt = expand_prompt(DEFAULT_PROMPT, k)
    assert prompt.count(IMAGE_TOKEN) == k
    assert IMAGE_PLACEHOLDER not in prompt
    assert prompt.startswith("Human: <Img><image>") and prompt.endswith("</Img> Generate a comprehensive and "
                                                                      "detailed diagnosis report for this chest "
                                                                      "xray image. \nAssistant:")  # fmt: skip


def test_expand_prompt_errors():
    with pytest.raises(ReportError, match="exactly once"):
        expand_prompt("Describe the image.", 4)
    with pytest.raises(ReportError, match="exactly once"):
        expand_prompt("<ImageHere> and <ImageHere>", 4)
    for bad_k in (0, -1, 2.0, True):
        with pytest.raises(ReportError, match="positive integer"):
            expand_prompt(DEFAULT_PROMPT, bad_k)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# tokenization
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _check_layout(out: dict, tokenizer, k: int) -> int:
    """Checks the ids / labels layout and returns the prompt length."""
    ids, labels, mask, prompt = out["input_ids"], out["labels"], out["attention_mask"], out["prompt_ids"]
    for tensor in (ids, labels, mask, prompt):
        assert tensor.dtype == torch.long and tensor.ndim == 1
    n_prompt = prompt.shape[0]
    assert torch.equal(ids[:n_prompt], prompt)
    assert ids.shape == labels.shape == mask.shape
    assert bool((mask == 1).all())
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((ids == image_id).sum()) == k
    assert bool((labels[:n_prompt] == IGNORE_INDEX).all())  # BOS, prompt text and image positions
    assert bool((labels[n_prompt:] != IGNORE_INDEX).all())
    assert torch.equal(labels[n_prompt:], ids[n_prompt:])
    assert int(ids[-1]) == tokenizer.eos_token_id
    return n_prompt


def test_tokenize_report_layout(tokenizer):
    k = 7
    report = REPORT_CORPUS[3]
    out = TokenizeReportd(tokenizer=tokenizer, num_image_tokens=k, max_length=512)({"report": report, "id": "s1"})
    n_prompt = _check_layout(out, tokenizer, k)
    assert out["id"] == "s1" and out["report"] == report
    assert int(out["input_ids"][0]) == tokenizer.bos_token_id
    assert tokenizer.decode(out["input_ids"][n_prompt:-1]) == report
    assert tokenizer.decode(out["prompt_ids"], skip_special_tokens=True).endswith("\nAssistant:")
    image_positions = (out["input_ids"] == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).nonzero().flatten()
    assert image_positions.tolist() == list(range(int(image_positions[0]), int(image_positions[0]) + k))


def test_eos_survives_truncation(tokenizer):
    k = 4
    report = " ".join(REPORT_CORPUS[:6])
    transform = TokenizeReportd(tokenizer=tokenizer, num_image_tokens=k, max_length=512)
    full = transform({"report": report})
    n_prompt = _check_layout(full, tokenizer, k)
    max_length = n_prompt + 10
    short = TokenizeReportd(tokenizer=tokenizer, num_image_tokens=k, max_length=max_length)({"report": report})
    _check_layout(short, tokenizer, k)
    assert short["input_ids"].shape[0] == max_length
    assert int(short["labels"][-1]) == tokenizer.eos_token_id
    # the kept report tokens are the first 9 of the full report
    assert torch.equal(short["input_ids"][n_prompt:-1], full["input_ids"][n_prompt : n_prompt + 9])
    # room for EOS only: the report is dropped entirely but EOS stays
    eos_only = TokenizeReportd(tokenizer=tokenizer, num_image_tokens=k, max_length=n_prompt + 1)({"report": report})
    assert eos_only["labels"][n_prompt:].tolist() == [tokenizer.eos_token_id]


def test_empty_report_is_just_eos(tokenizer):
    out = TokenizeReportd(tokenizer=tokenizer, num_image_tokens=2)({"report": ""})
    n_prompt = _check_layout(out, tokenizer, 2)
    assert out["input_ids"].shape[0] == n_prompt + 1


def test_missing_report_key(tokenizer):
    lenient = TokenizeReportd(tokenizer=tokenizer, num_image_tokens=3, allow_missing_keys=True)
    out = lenient({"id": "x"})
    assert set(out) == {"id", "prompt_ids"}
    assert torch.equal(out["prompt_ids"], torch.tensor(lenient.prompt_ids))
    with pytest.raises(KeyError):
        TokenizeReportd(tokenizer=tokenizer, num_image_tokens=3)({"id": "x"})


def test_tokenize_errors(tokenizer):
    with pytest.raises(ReportError, match="no room"):
        TokenizeReportd(tokenizer=tokenizer, num_image_tokens=16, max_length=16)
    with pytest.raises(ReportError, match="exactly once"):
        TokenizeReportd(tokenizer=tokenizer, num_image_tokens=3, prompt_template="Describe:")
    with pytest.raises(ReportError, match="outside the placeholder"):
        TokenizeReportd(tokenizer=tokenizer, num_image_tokens=3, prompt_template="<image> <ImageHere> Report:")
    with pytest.raises(ReportError, match="string"):
        TokenizeReportd(tokenizer=tokenizer, num_image_tokens=3)({"report": 42})
    with pytest.raises(ReportError, match="one report key"):
        TokenizeReportd(["report", "other"], tokenizer=tokenizer, num_image_tokens=3)
    with pytest.raises(ReportError, match="<region>"):
        TokenizeReportd(tokenizer=tokenizer, num_image_tokens=3, image_token="<region>")


def test_custom_prompt_template(tokenizer):
    transform = TokenizeReportd(tokenizer=tokenizer, num_image_tokens=5, prompt_template="<ImageHere> Findings:")
    out = transform({"report": REPORT_CORPUS[0]})
    _check_layout(out, tokenizer, 5)
    assert tokenizer.decode(out["prompt_ids"]) == "<s>" + "<image>" * 5 + " Findings:"


def test_gpt2_tokenizer_without_bos_post_processing_or_pad(tokenizer):
    vocab = {tok: i for i, tok in enumerate(t for t in tokenizer.get_vocab() if not t.startswith("<"))}
    vocab["<|endoftext|>"] = len(vocab)
    gpt2 = GPT2Tokenizer(vocab=vocab, merges=[])
    with pytest.raises(ReportError, match="add_image_token"):
        encode_prompt(gpt2, 3)
    add_image_token(gpt2)
    out = TokenizeReportd(tokenizer=gpt2, num_image_tokens=3, max_length=512)({"report": "lungs are clear ."})
    n_prompt = _check_layout(out, gpt2, 3)
    assert int(out["input_ids"][0]) == gpt2.bos_token_id  # <|endoftext|> as BOS, added once
    assert int((out["input_ids"] == gpt2.eos_token_id).sum()) == 2  # BOS and EOS are the same token
    assert gpt2.decode(out["input_ids"][n_prompt:-1]) == "lungs are clear ."


def test_llama_tokenizer_adds_no_second_bos():
    # a Llama tokenizer with byte fallback over a tiny vocabulary: <unk> <s> </s>, 256 byte tokens, "▁"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, "▁": 259}
    llama = LlamaTokenizer(vocab=vocab, merges=[])
    image_id = add_image_token(llama)
    assert llama.pad_token_id == llama.eos_token_id
    out = TokenizeReportd(tokenizer=llama, num_image_tokens=4, max_length=1024)({"report": "no effusion ."})
    n_prompt = _check_layout(out, llama, 4)
    assert int(out["input_ids"][0]) == llama.bos_token_id
    assert int((out["input_ids"] == llama.bos_token_id).sum()) == 1
    assert int((out["input_ids"] == image_id).sum()) == 4
    assert llama.decode(out["input_ids"][n_prompt:-1]).strip() == "no effusion ."
