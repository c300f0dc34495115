"""The text side of CLIP-ReID / π-VL training (examples/train_prompts.py) on a tiny offline CLIP text tower."""
import pytest
import torch

from tests.tiny_text import WORDS, text_tower, word_tokenizer
from train_losses import supcon_loss
from train_prompts import LIP_PART_WORDS, PromptLearner, encode_prompt_embeddings

@pytest.fixture(scope='module')
def tower_and_tokenizer():
    tokenizer = word_tokenizer()
    return text_tower(len(tokenizer)), tokenizer


def learner(tower, tokenizer, **kwargs):
    torch.manual_seed(1)
    return PromptLearner(tokenizer, tower.text_model.embeddings.token_embedding, num_classes=5,
                         max_length=tower.config.max_position_embeddings, **kwargs)


def test_prompt_features_from_embeddings_equal_the_text_towers_own(tower_and_tokenizer):
    tower, tokenizer = tower_and_tokenizer
    batch = tokenizer(["A photo of a x x person's left shoe.", 'a photo of a person.'], padding='max_length',
                      max_length=16, return_tensors='pt')
    embeddings = tower.text_model.embeddings.token_embedding(batch['input_ids'])
    eos = (batch['input_ids'] == tokenizer.eos_token_id).int().argmax(1)
    with torch.no_grad():
        torch.testing.assert_close(encode_prompt_embeddings(tower, embeddings, eos), tower(**batch).text_embeds)


def test_identity_and_part_prompts_put_the_identity_tokens_in_place(tower_and_tokenizer):
    tower, tokenizer = tower_and_tokenizer
    prompts = learner(tower, tokenizer, part_words=LIP_PART_WORDS)
    table = tower.text_model.embeddings.token_embedding.weight
    ids = lambda text: tokenizer(text)['input_ids']  # noqa: E731
    embeddings, eos = prompts.prompts(torch.tensor([3, 1]))
    words = ids('A photo of a x x x x person.')  # SOS a photo of a x x x x person . EOS
    assert eos.tolist() == [len(words) - 1] * 2
    torch.testing.assert_close(embeddings[0, 5:9], prompts.context[3])
    torch.testing.assert_close(embeddings[1, 5:9], prompts.context[1])
    torch.testing.assert_close(embeddings[0, :5], table[words[:5]])
    torch.testing.assert_close(embeddings[0, 9:len(words)], table[words[9:]])
    # part prompts: identity 2's tokens in "... person's right leg." (LIP class 17)
    embeddings, eos = prompts.prompts(torch.tensor([2]), parts=torch.tensor([17]))
    words = ids("A photo of a x x x x person's right leg.")
    assert eos.item() == len(words) - 1
    torch.testing.assert_close(embeddings[0, 5:9], prompts.context[2])
    torch.testing.assert_close(embeddings[0, 9:len(words)], table[words[9:]])
    # both kinds in one call (part -1: the identity prompt), as stage 1 asks for them
    mixed, mixed_eos = prompts(torch.tensor([3, 2]), parts=torch.tensor([-1, 17]))
    torch.testing.assert_close(mixed[0], prompts.prompts(torch.tensor([3]))[0][0])
    torch.testing.assert_close(mixed[1], embeddings[0])
    assert mixed_eos.tolist() == [len(ids('A photo of a x x x x person.')) - 1, eos.item()]
    # label-only part prompts (B+H) carry no identity tokens: the same for every identity
    plain = learner(tower, tokenizer, part_words=LIP_PART_WORDS, identity_parts=False)
    a, _ = plain.prompts(torch.tensor([0]), parts=torch.tensor([2]))
    b, _ = plain.prompts(torch.tensor([4]), parts=torch.tensor([2]))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0, :11], table[ids("A photo of a person's hair.")])


def test_prompt_tuning_changes_only_the_identity_tokens(tower_and_tokenizer):
    tower, tokenizer = tower_and_tokenizer
    prompts = learner(tower, tokenizer)
    before_tower = {k: v.clone() for k, v in tower.state_dict().items()}
    before = prompts.context.detach().clone()
    optimizer = torch.optim.Adam(prompts.parameters(), lr=1e-2)
    images, labels = torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    losses = []
    for _ in range(20):
        texts = encode_prompt_embeddings(tower, *prompts.prompts(labels))
        loss = supcon_loss(images, texts, labels, labels) + supcon_loss(texts, images, labels, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, before_tower[k]) for k, v in tower.state_dict().items())
    changed = (prompts.context.detach() - before).abs().amax(dim=(1, 2)) > 0
    assert changed.tolist() == [True, True, True, True, False]  # identity 4 is not in the batch


def test_prompts_that_cannot_be_built_are_named(tower_and_tokenizer):
    tower, tokenizer = tower_and_tokenizer
    with pytest.raises(ValueError, match=r"prompt \"A photo of a X X X X person's left shoe.\" is 16 tokens"):
        PromptLearner(tokenizer, tower.text_model.embeddings.token_embedding, 5, max_length=15,
                      part_words=['hat', 'left shoe'])
    with pytest.raises(ValueError, match='does not know'):
        learner(tower, tokenizer, part_words=['hat', 'umbrella'])
    with pytest.raises(ValueError, match='placeholder'):
        learner(tower, word_tokenizer([w for w in WORDS if w != 'x']))
    with pytest.raises(ValueError, match=r'part indices must lie in \[-1, 20\)'):
        learner(tower, tokenizer, part_words=LIP_PART_WORDS).prompts(torch.tensor([0]), parts=torch.tensor([20]))
