namespace PortAzure.Diagnostics;

/// <summary>An exception's messages, outer to inner, for one line of text.</summary>
public static class ExceptionMessages
{
    /// <summary>
    /// Each message of <paramref name="exception"/> and its inner exceptions once, joined by spaces: an inner one that an
    /// outer message already quotes (an argument's without its "(Parameter '…')" too) is not repeated.
    /// </summary>
    public static string Of(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        var messages = new List<string>();
        for (Exception? e = exception; e is not null; e = e.InnerException)
        {
            var message = e is ArgumentException { ParamName: { } parameter } ? e.Message.Replace($" (Parameter '{parameter}')", "", StringComparison.Ordinal) : e.Message;
            if (!messages.Any(m => m.Contains(message, StringComparison.Ordinal)))
            {
                messages.Add(e.Message);
            }
        }
        return string.Join(" ", messages);
    }
}
