using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Emulator;

public class BehaviorEndpointsTests
{
    [Theory]
    [InlineData("_emulator/port/behavior", """{"delayMs":-1}""")]
    [InlineData("_emulator/port/behavior", """{"failNext":-1}""")]
    [InlineData("_emulator/behavior", """{"delayMs":-1}""")]
    [InlineData("_emulator/behavior", """{"responses":[{"status":503,"delayMs":-5}]}""")]
    public async Task SetBehavior_NegativeValue_Answers400AndKeepsTheBehavior(string path, string body)
    {
        // A test that scripts a negative hold by mistake should hear so, not run with none.
        await using var emulator = await TestHost.StartEmulatorAsync();
        var before = await emulator.Client.GetStringAsync(new Uri(path, UriKind.Relative));

        using var content = new StringContent(body, System.Text.Encoding.UTF8, "application/json");
        using var answer = await emulator.Client.PostAsync(new Uri(path, UriKind.Relative), content);

        Assert.Equal(HttpStatusCode.BadRequest, answer.StatusCode);
        Assert.Equal("invalid_body", (await answer.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("error").GetString());
        Assert.Equal(before, await emulator.Client.GetStringAsync(new Uri(path, UriKind.Relative)));
    }

    [Fact]
    public async Task PortTokenCall_RecordedCalls_MaskTheClientSecretAndKeepTheClientId()
    {
        // The emulator serves its recorded calls without a key, and a developer may run it with a real secret.
        await using var emulator = await TestHost.StartEmulatorAsync();
        using var content = new StringContent("""{"clientId":"someone","clientSecret":"not-for-anyone-1234"}""", System.Text.Encoding.UTF8, "application/json");
        using var answer = await emulator.Client.PostAsync(new Uri("v1/auth/access_token", UriKind.Relative), content);
        answer.EnsureSuccessStatusCode();

        var call = Assert.Single(await new EmulatorClient(emulator.Client).PortCallsAsync());

        Assert.DoesNotContain("not-for-anyone-1234", call.BodyText, StringComparison.Ordinal);
        Assert.Contains("\"clientSecret\":\"***\"", call.BodyText, StringComparison.Ordinal);
        Assert.Contains("\"clientId\":\"someone\"", call.BodyText, StringComparison.Ordinal);
        emulator.Logs.AssertNoneContain(["not-for-anyone-1234"]);
    }

    [Fact]
    public async Task SetPortBehavior_DelayOnly_KeepsTheOtherSettings()
    {
        await using var emulator = await TestHost.StartEmulatorAsync();
        await new EmulatorClient(emulator.Client).PortBehaviorAsync(new { failNext = 2, status = 429 });

        await new EmulatorClient(emulator.Client).PortBehaviorAsync(new { delayMs = 250 });

        var state = await emulator.Client.GetFromJsonAsync<JsonElement>(new Uri("_emulator/port/behavior", UriKind.Relative));
        Assert.Equal(250, state.GetProperty("delayMs").GetInt32());
        Assert.Equal(2, state.GetProperty("failNext").GetInt32());
        Assert.Equal(429, state.GetProperty("status").GetInt32());
    }
}
