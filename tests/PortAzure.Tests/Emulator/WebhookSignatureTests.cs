using System.Text;
using PortAzure.AzureDevOpsEmulator.Webhooks;

namespace PortAzure.Tests.Emulator;

/// <summary>
/// The emulator is the tests' stand-in for Azure's check: it must pass Microsoft's own example and fail what Azure would,
/// or a signing mistake the Dispatcher shared with it would go unseen.
/// </summary>
public class WebhookSignatureTests
{
    private static readonly byte[] MicrosoftBody = Encoding.UTF8.GetBytes("""{"resource":{"message":{"title":"Hello, world!","subtitle":"I'm using WebHooks!"}}}""");

    [Fact]
    public void Verify_MicrosoftsDocumentedExample_IsValid()
    {
        Assert.Equal(SignatureCheck.Valid, WebhookSignature.Verify("750D33212D3AD4932CC390819050734831A0A94F", "secret", MicrosoftBody));
    }

    [Theory]
    [InlineData("750D33212D3AD4932CC390819050734831A0A94F", "Secret")] // another secret
    [InlineData("750D33212D3AD4932CC390819050734831A0A94E", "secret")] // one digit off
    [InlineData("750D33212D3AD4932CC390819050734831A0A9", "secret")] // cut short
    [InlineData("not a signature at all", "secret")]
    public void Verify_WrongOrMalformed_IsAMismatch(string header, string secret)
    {
        Assert.Equal(SignatureCheck.Mismatch, WebhookSignature.Verify(header, secret, MicrosoftBody));
    }

    [Fact]
    public void Verify_BodyChangedByOneByte_IsAMismatch()
    {
        var changed = MicrosoftBody.ToArray();
        changed[^3] = (byte)' ';

        Assert.Equal(SignatureCheck.Mismatch, WebhookSignature.Verify("750D33212D3AD4932CC390819050734831A0A94F", "secret", changed));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("  ")]
    public void Verify_NoSignature_IsMissing(string? header)
    {
        Assert.Equal(SignatureCheck.Missing, WebhookSignature.Verify(header, "secret", MicrosoftBody));
    }
}
